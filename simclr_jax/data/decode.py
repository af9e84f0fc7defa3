"""One image file -> RGB 8-bit JPEG/PNG bytes that TensorFlow decodes as a viewer shows it, or a
reason why the file is unusable.

Pillow decodes; TensorFlow's decoders (what training uses) ignore EXIF orientation, cannot read
CMYK JPEGs or WebP, and drop alpha without compositing, so every image is checked here once and
rewritten only when needed:
- EXIF orientation is applied (ImageOps.exif_transpose): the pixels come out as a photo viewer
  shows them, and the rewritten file carries no orientation tag.
- Grey, 1-bit, palette, CMYK, YCbCr and LAB images become RGB; 16-bit images keep their 8 most
  significant bits (Pillow's own convert would clip 16-bit grey at 255).
- Transparency (RGBA, LA, PA, a palette's or grey image's transparent index) is composited over
  white, as product images are usually shown.
- `max_side` > 0: images whose longer side is larger are downscaled (bicubic) to it; JPEGs are
  decoded at a reduced DCT scale first (Image.draft), which makes this cheap.
A file that is already an 8-bit RGB JPEG or PNG with nothing to change is kept byte for byte.
Rewritten images are JPEG (quality 95) when the source was JPEG or WebP, PNG otherwise.

Only Pillow and NumPy are imported here, so worker processes start fast (prepare's pool).
"""

import dataclasses
import io
import warnings

import numpy as np
from PIL import Image
from PIL import ImageOps

JPEG_QUALITY = 95
PNG_COMPRESS_LEVEL = 3  # Faster than Pillow's 6 for a few percent more bytes.
_ORIENTATION = 0x0112
_JPEG = ('JPEG', 'MPO')  # MPO: a camera JPEG with extra frames appended; TF reads the first.
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError,
                  Image.DecompressionBombError)


class BadImage(Exception):
  """A file that cannot be used; `kind` is a short category (for counts), `detail` the rest."""

  def __init__(self, kind: str, detail: str = ''):
    super().__init__(f'{kind}: {detail}' if detail else kind)
    self.kind, self.detail = kind, detail


@dataclasses.dataclass(frozen=True)
class Normalized:
  data: bytes  # RGB 8-bit JPEG or PNG.
  height: int
  width: int
  changes: tuple[str, ...]  # What was done, e.g. ('EXIF orientation 6 applied', 'CMYK -> RGB').


def normalize(data: bytes, *, min_side: int = 0, max_side: int = 0) -> Normalized:
  """`data`: the bytes of an image file. Raises BadImage. `min_side`: images whose shorter side
  (as displayed) is below it are refused (the crop would upscale them)."""
  if not data:
    raise BadImage('empty file', '0 bytes')
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # Pillow warns on odd EXIF / palette chunks; errors raise.
    try:
      im = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError as e:
      raise BadImage('not an image', 'no decoder recognises its bytes') from e
    except _DECODE_ERRORS as e:
      raise BadImage('truncated or corrupt', f'unreadable header ({e})') from e
    fmt, mode = im.format, im.mode
    w, h = im.size
    try:
      orientation = int(im.getexif().get(_ORIENTATION, 1) or 1)
    except _DECODE_ERRORS:
      orientation = 1  # Unreadable EXIF: shown unrotated by viewers too.
    shown_w, shown_h = (h, w) if orientation in _TRANSPOSED else (w, h)
    if min(w, h) < min_side:
      raise BadImage('smaller than the crop',
                     f'{shown_w}x{shown_h} px, shorter side below {min_side} px')
    scale = max_side / max(w, h) if max_side and max(w, h) > max_side else 1.0
    if fmt == 'PNG':
      _verify_png(data)
    if fmt in _JPEG and scale < 1:
      im.draft(mode, (int(np.ceil(w * scale)), int(np.ceil(h * scale))))
    try:
      im.load()
    except _DECODE_ERRORS as e:
      raise BadImage('truncated or corrupt', str(e)) from e
    changes = []
    if orientation != 1:
      im = ImageOps.exif_transpose(im)
      changes.append(f'EXIF orientation {orientation} applied')
    im, converted = _to_rgb(im)
    changes += converted
    if scale < 1:
      size = (max(1, round(shown_w * scale)), max(1, round(shown_h * scale)))
      im = im.resize(size, Image.Resampling.BICUBIC)
      changes.append(f'downscaled to {size[0]}x{size[1]}')
    if not changes and (fmt in _JPEG or fmt == 'PNG' and _png_is_rgb8(data)):
      return Normalized(data, h, w, ())
    if fmt not in _JPEG + ('PNG',):
      changes.append(f'{fmt} re-encoded')
    out = io.BytesIO()
    if fmt in _JPEG + ('WEBP',):
      im.save(out, format='JPEG', quality=JPEG_QUALITY)
    else:
      im.save(out, format='PNG', compress_level=PNG_COMPRESS_LEVEL)
    return Normalized(out.getvalue(), im.height, im.width, tuple(changes))


def _verify_png(data: bytes) -> None:
  """Pillow's PNG verify checks every chunk's CRC, which load() alone does not."""
  try:
    Image.open(io.BytesIO(data)).verify()
  except _DECODE_ERRORS as e:
    raise BadImage('truncated or corrupt', str(e)) from e


def _png_is_rgb8(data: bytes) -> bool:
  """IHDR: bit depth 8, colour type 2 (RGB, no alpha)."""
  return len(data) > 25 and data[24] == 8 and data[25] == 2


def _to_rgb(im: Image.Image) -> tuple[Image.Image, list[str]]:
  mode = im.mode
  if mode == 'RGB':
    return im, []
  if mode.startswith('I;16') or mode in ('I', 'F'):
    x = np.asarray(im).astype(np.float64)
    if mode.startswith('I;16') or mode == 'I' and x.max(initial=0) > 255:
      x = x / 257.0  # 16-bit range -> 8-bit.
    grey = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert('RGB'), [f'{mode} (16-bit) -> RGB 8-bit'
                                                  if mode != 'F' else 'F -> RGB 8-bit']
  if 'A' in mode or 'a' in mode or 'transparency' in im.info:
    rgba = im.convert('RGBA')
    white = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert('RGB'), [
        f'{mode} with transparency composited over white']
  return im.convert('RGB'), [f'{mode} -> RGB']


def read_bytes(path: str) -> bytes:
  """A local file with open(); anything else (gs://...) through tf.io.gfile."""
  if '://' in path:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    with tf.io.gfile.GFile(path, 'rb') as f:
      return f.read()
  with open(path, 'rb') as f:
    return f.read()


def normalize_file(args: tuple[str, int, int]) -> tuple:
  """(path, min_side, max_side) -> ('ok', bytes, height, width, changes) or
  ('bad', kind, detail): for worker pools (picklable in and out, never raises on bad input)."""
  path, min_side, max_side = args
  try:
    data = read_bytes(path)
  except OSError as e:
    return ('bad', 'unreadable file', str(e))
  try:
    n = normalize(data, min_side=min_side, max_side=max_side)
  except BadImage as e:
    return ('bad', e.kind, e.detail)
  return ('ok', n.data, n.height, n.width, n.changes)
