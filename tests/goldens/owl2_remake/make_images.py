"""The DeQA golden's images: crops of scikit-image's bundled photographs, of different sizes and aspect ratios,
RGB and greyscale, PNG and JPEG. usage: python make_images.py OUT_DIR"""

import sys
from pathlib import Path

from PIL import Image
from skimage import data

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
astronaut, coffee, chelsea, camera = (
    Image.fromarray(f()) for f in (data.astronaut, data.coffee, data.chelsea, data.camera)
)
IMAGES = {
    "wide_rgb.png": astronaut.crop((60, 20, 400, 220)).resize((170, 100), Image.Resampling.BICUBIC),
    "tall_rgb.jpg": coffee.crop((150, 50, 350, 400)).resize((66, 115), Image.Resampling.BICUBIC),
    "square_rgb.png": chelsea.crop((100, 0, 400, 300)).resize((90, 90), Image.Resampling.BICUBIC),
    "wide_grey.png": camera.crop((0, 100, 512, 300)).resize((150, 58), Image.Resampling.BICUBIC),  # mode L
    "square_grey.jpg": camera.crop((100, 50, 400, 350)).resize((77, 77), Image.Resampling.BICUBIC),  # mode L
    "big_rgb.jpg": astronaut.resize((470, 452), Image.Resampling.BICUBIC),  # larger than 448: downscaled
}
for name, img in IMAGES.items():
    img.save(out / name, quality=80) if name.endswith(".jpg") else img.save(out / name)
    print(name, Image.open(out / name).size, Image.open(out / name).mode)
