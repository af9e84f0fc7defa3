"""A folder of real image files, as a user's would look, built with Pillow for the tests.

make_folder(root) writes:
  train/<class>/   3 classes of coloured shapes (disc, square, stripes), JPEG and PNG, 24-40 px,
                   plus one of every bad kind (BAD_TRAIN) and every convertible kind (CONVERTED);
  test/<class>/    the same classes, clean;
  unlabelled/      shapes directly inside and in a nested folder, plus a valid symlink to an image,
                   a broken symlink and a symlinked folder.
Each clean image's class is its colour family, so a probe can learn it.
"""

import io
import os

import numpy as np
from PIL import Image

CLASSES = ('disc', 'square', 'stripes')
TRAIN_PER_CLASS, TEST_PER_CLASS, UNLABELLED = 12, 6, 30
# Skipped files in train/ (path relative to the split -> the reason's kind).
BAD_TRAIN = {
    'disc/truncated.jpg': 'truncated or corrupt',
    'disc/corrupt.png': 'truncated or corrupt',
    'square/notes.txt': 'not an image file',
    'square/.DS_Store': 'hidden file',
    'stripes/Thumbs.db': 'not an image file',
    'stripes/tiny.png': 'smaller than the crop',
    'square/fake.jpg': 'not an image',
}
# Kept after conversion (path -> a fragment of the change recorded).
CONVERTED = {
    'disc/grey.jpg': 'L -> RGB',
    'disc/cmyk.jpg': 'CMYK -> RGB',
    'square/alpha.png': 'RGBA with transparency',
    'square/palette.png': 'P -> RGB',
    'stripes/deep16.png': 'I;16',
    'stripes/rotated.jpg': 'EXIF orientation 6',
}
BAD_UNLABELLED = {'broken_link.jpg': 'broken symlink', 'linked_folder': 'symlinked folder'}
ROTATED_STORED = (24, 40)  # (h, w) as stored; shown (40, 24) after orientation 6.


def shape_image(cls: int, i: int, size: tuple[int, int]) -> np.ndarray:
  """uint8 [h, w, 3]: class 0 a red disc, 1 a green square, 2 blue stripes, on grey."""
  h, w = size
  rng = np.random.RandomState(100 * cls + i)
  img = np.full((h, w, 3), 90 + rng.randint(0, 40), np.uint8)
  yy, xx = np.mgrid[:h, :w]
  colour = [(220, 40, 40), (40, 200, 60), (40, 60, 220)][cls]
  if cls == 0:
    mask = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2
  elif cls == 1:
    mask = (abs(yy - h / 2) < h / 4) & (abs(xx - w / 2) < w / 4)
  else:
    mask = (xx // 4) % 2 == 0
  img[mask] = colour
  return img


def save(path: str, img, fmt: str, **kw) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  im = img if isinstance(img, Image.Image) else Image.fromarray(img)
  im.save(path, format=fmt, **kw)


def _size(i: int) -> tuple[int, int]:
  return 24 + (5 * i) % 17, 24 + (7 * i) % 17


def _clean(root: str, split: str, per_class: int, salt: int) -> None:
  for c, name in enumerate(CLASSES):
    for i in range(per_class):
      fmt, ext = (('JPEG', 'jpg') if i % 2 == 0 else ('PNG', 'png'))
      save(f'{root}/{split}/{name}/img_{i:03d}.{ext}', shape_image(c, i + salt, _size(i)), fmt,
            **({'quality': 95} if fmt == 'JPEG' else {}))


def _bytes(img: np.ndarray, fmt: str) -> bytes:
  b = io.BytesIO()
  Image.fromarray(img).save(b, format=fmt)
  return b.getvalue()


def rotated_stored() -> np.ndarray:
  """The EXIF-rotated photo as stored: top half red, bottom half blue."""
  h, w = ROTATED_STORED
  img = np.zeros((h, w, 3), np.uint8)
  img[:h // 2] = (230, 20, 20)
  img[h // 2:] = (20, 20, 230)
  return img


def _bad_and_converted(root: str) -> None:
  t = f'{root}/train'
  jpeg = _bytes(shape_image(0, 99, (40, 40)), 'JPEG')
  open(f'{t}/disc/truncated.jpg', 'wb').write(jpeg[:len(jpeg) // 2])
  png = bytearray(_bytes(shape_image(0, 98, (32, 32)), 'PNG'))
  idat = png.index(b'IDAT')
  png[idat + 8:idat + 40] = bytes(32)  # Zeroed compressed data: the chunk's CRC fails.
  open(f'{t}/disc/corrupt.png', 'wb').write(bytes(png))
  open(f'{t}/square/notes.txt', 'w').write('shot list\n')
  open(f'{t}/square/.DS_Store', 'wb').write(b'\x00\x00\x00\x01Bud1' + bytes(64))
  open(f'{t}/square/fake.jpg', 'w').write('<html>not a jpeg</html>')
  open(f'{t}/stripes/Thumbs.db', 'wb').write(bytes(range(256)))
  save(f'{t}/stripes/tiny.png', shape_image(2, 97, (10, 12)), 'PNG')
  grey = shape_image(0, 96, (32, 32)).mean(-1).astype(np.uint8)
  save(f'{t}/disc/grey.jpg', Image.fromarray(grey, 'L'), 'JPEG')
  save(f'{t}/disc/cmyk.jpg', Image.fromarray(shape_image(0, 95, (32, 28))).convert('CMYK'),
        'JPEG')
  rgba = np.dstack([shape_image(1, 94, (30, 30)), np.full((30, 30), 255, np.uint8)])
  rgba[:, :10, 3] = 0  # A transparent band: composited over white.
  save(f'{t}/square/alpha.png', Image.fromarray(rgba, 'RGBA'), 'PNG')
  save(f'{t}/square/palette.png', Image.fromarray(shape_image(1, 93, (28, 36))).convert(
      'P', palette=Image.Palette.ADAPTIVE, colors=16), 'PNG')
  deep = (shape_image(2, 92, (30, 30))[..., 2].astype(np.uint16) * 257)
  save(f'{t}/stripes/deep16.png', Image.fromarray(deep), 'PNG')
  exif = Image.Exif()
  exif[0x0112] = 6  # Rotate 90 degrees clockwise to display.
  save(f'{t}/stripes/rotated.jpg', rotated_stored(), 'JPEG', exif=exif.tobytes(), quality=95)


def make_folder(root: str) -> str:
  _clean(root, 'train', TRAIN_PER_CLASS, 0)
  _clean(root, 'test', TEST_PER_CLASS, 50)
  _bad_and_converted(root)
  u = f'{root}/unlabelled'
  for i in range(UNLABELLED):
    sub = 'nested/deeper/' if i % 3 == 0 else ''
    fmt, ext = (('JPEG', 'jpg') if i % 2 else ('PNG', 'png'))
    save(f'{u}/{sub}u_{i:03d}.{ext}', shape_image(i % 3, 200 + i, _size(i)), fmt)
  os.symlink(f'{root}/test/disc/img_000.jpg', f'{u}/linked.jpg')  # Read: a valid symlink.
  os.symlink(f'{root}/no_such_file.jpg', f'{u}/broken_link.jpg')
  os.symlink(f'{root}/test', f'{u}/linked_folder')
  return root


NUM_TRAIN = 3 * TRAIN_PER_CLASS + len(CONVERTED)
NUM_TEST = 3 * TEST_PER_CLASS
NUM_UNLABELLED = UNLABELLED + 1  # The valid symlink counts.
