% Expected values of the classical golden, by the reference implementations run unmodified in GNU Octave:
%   ssim     Wang's ssim_index.m (2003, Version 1.0) on MATLAB rgb2gray of each image
%   ms_ssim  Wang's msssim.m + ssim_index_new.m (2003) on MATLAB rgb2gray of each image
%   psnr     psnr() of Octave's image package (MATLAB's psnr: uint8 RGB, peak 255, MSE over all three channels)
%   psnr_y   the same psnr() on channel 1 of rgb2ycbcr() (BT.601 studio-range Y, rounded to uint8 as MATLAB does)
% Usage, from tests/goldens/classical:  octave-cli remake/wang_reference.m WANG_DIR > expected.json
% where WANG_DIR holds ssim_index.m, msssim.m and ssim_index_new.m as fetched (see README.md).
1;
pkg load image

function g = matlab_rgb2gray(rgb)
  % MATLAB's rgb2gray (R2014a and later): the first row of inv of rgb2ntsc's matrix, applied with imapplymatrix and
  % rounded to the input class (uint8). Octave's own rgb2gray rounds these weights to 6 decimals and goes through
  % [0,1] doubles, so the formula is written out here; its values are reported beside as `octave_rgb2gray`.
  T = inv([1.0 0.956 0.621; 1.0 -0.272 -0.647; 1.0 -1.106 1.703]);
  coef = T(1, :);
  x = double(rgb);
  g = uint8(coef(1) * x(:, :, 1) + coef(2) * x(:, :, 2) + coef(3) * x(:, :, 3));
end

function s = num(x)
  % JSON has no infinity; Python's json reads this spelling (identical Y planes give psnr_y = Inf)
  if isinf(x)
    s = 'Infinity';
  else
    s = sprintf('%.17g', x);
  end
end

args = argv();
addpath(args{1});
pairs = jsondecode(fileread('pairs.json'));
names = fieldnames(pairs);
T = inv([1.0 0.956 0.621; 1.0 -0.272 -0.647; 1.0 -1.106 1.703]);
printf('{\n "octave": "%s",\n "image_package": "%s",\n', OCTAVE_VERSION, pkg('describe', 'image'){1}.version);
printf(' "rgb2gray_weights": [%.17g, %.17g, %.17g],\n "pairs": {\n', T(1, 1), T(1, 2), T(1, 3));
for i = 1:numel(names)
  % jsondecode turns "astronaut-hue30" into a valid field name; the listing keeps the files' names
  p = pairs.(names{i});
  ref = imread(fullfile('pairs', p.reference));
  dist = imread(fullfile('pairs', p.distorted));
  name = p.distorted(1:end - 4);
  ref_g = double(matlab_rgb2gray(ref));
  dist_g = double(matlab_rgb2gray(dist));
  s = ssim_index(ref_g, dist_g);
  ms = msssim(ref_g, dist_g);
  ref_o = double(rgb2gray(ref));
  dist_o = double(rgb2gray(dist));
  yr = rgb2ycbcr(ref);
  yd = rgb2ycbcr(dist);
  printf('  "%s": {"psnr": %s, "psnr_y": %s, "ssim": %s, "ms_ssim": %s,\n', name, num(psnr(dist, ref)), ...
         num(psnr(yd(:, :, 1), yr(:, :, 1))), num(s), num(ms));
  printf('   "octave_rgb2gray": {"ssim": %s, "ms_ssim": %s}}', num(ssim_index(ref_o, dist_o)), num(msssim(ref_o, dist_o)));
  if i < numel(names)
    printf(',\n');
  else
    printf('\n');
  end
end
printf(' }\n}\n');
