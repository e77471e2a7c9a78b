"""Write the golden's small real H.264 mp4 videos with PyAV (no system ffmpeg needed).

Every frame differs (a colour ramp that shifts with the frame index, a square that moves), so a wrong frame index
changes the score. usage: python make_videos.py OUT_DIR
"""

import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

VIDEOS = {  # name: (fps, frames, (W, H))
    "v10fps_2p5s.mp4": (Fraction(10), 25, (96, 64)),  # 2.5 s: 1 fps takes 2 frames (0, 10), not a third at 20
    "v2997fps_4p2s.mp4": (Fraction(30000, 1001), 126, (112, 80)),  # 29.97 fps: frames 0, 29, 59, 89 (not 30, 60, 90)
    "v25fps_1p2s.mp4": (Fraction(25), 30, (64, 96)),  # 1.2 s, portrait: one frame (0)
}


def frame(i: int, w: int, h: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = (x * 255 / w + 7 * i) % 256
    g = (y * 255 / h + 13 * i) % 256
    b = ((x + y) * 2 + 29 * i) % 256
    img = np.stack([r, g, b], -1).astype(np.uint8)
    s = max(8, min(w, h) // 4)
    x0, y0 = (5 * i) % (w - s), (3 * i) % (h - s)
    img[y0 : y0 + s, x0 : x0 + s] = (255 - 9 * i % 256, 40, 200)
    return img


def write(path: Path, fps: Fraction, n: int, size: tuple[int, int]) -> None:
    w, h = size
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "26", "preset": "medium", "threads": "1"}  # x264: one thread
        for i in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame(i, w, h), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, (fps, n, size) in VIDEOS.items():
        write(out / name, fps, n, size)
        print(name, (out / name).stat().st_size, "bytes")
