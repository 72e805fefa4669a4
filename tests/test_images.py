import io

import numpy as np
import pytest
from PIL import Image

from mushroom.fileio import atomic_write, remove_partials
from mushroom.images import BadImage, decode, describe_bytes, load_image, resize_with_pad


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def test_resize_with_pad_keeps_aspect_and_centres():
    img = Image.new("RGB", (200, 100), (255, 255, 255))
    out = resize_with_pad(img, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert out[:16].max() == 0 and out[48:].max() == 0            # black padding top and bottom
    assert out[17:47].min() == 255                                # the photo, scaled to 64 x 32
    assert out.max() == 255                                       # [0, 255], never [0, 1]


def test_exif_orientation_is_honoured(tmp_path):
    # A 60x20 landscape image whose EXIF says "rotate 90": it must come out portrait.
    img = Image.new("RGB", (60, 20), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rot.jpg"
    path.write_bytes(_jpeg(img, exif=exif.tobytes()))
    assert decode(path.read_bytes()).size == (20, 60)
    arr = load_image(path, 60)
    assert arr[:, :20].max() < 30 and arr[:, 20:40, 0].min() > 150  # padding left, photo in the middle


def test_grayscale_and_alpha_become_rgb(tmp_path):
    gray = tmp_path / "g.png"
    Image.new("L", (10, 10), 128).save(gray)
    assert load_image(gray, 8).shape == (8, 8, 3)
    alpha = tmp_path / "a.png"
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(alpha)
    assert load_image(alpha, 10).min() == 255   # fully transparent -> white, not black


@pytest.mark.parametrize("data", [b"", b"<html>502 Bad Gateway</html>", None])
def test_broken_bytes_raise_bad_image(data):
    if data is None:  # a truncated JPEG
        data = _jpeg(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)))[:500]
    with pytest.raises(BadImage, match="not a readable image"):
        describe_bytes(data)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(BadImage, match="does not exist"):
        load_image(tmp_path / "nope.jpg", 32)


def test_describe_bytes_and_atomic_write(tmp_path):
    data = _jpeg(Image.new("RGB", (30, 20), (1, 2, 3)))
    sha, w, h = describe_bytes(data)
    assert (w, h) == (30, 20) and len(sha) == 64
    atomic_write(tmp_path / "a" / "x.jpg", data)
    assert (tmp_path / "a" / "x.jpg").read_bytes() == data
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.jpg"]
    (tmp_path / "a" / ".partial-123.jpg").write_bytes(b"x")
    assert remove_partials(tmp_path) == 1


def test_as_jpeg_keeps_jpeg_bytes_and_reencodes_the_rest():
    from mushroom.images import as_jpeg

    jpeg, png = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (8, 6), (10, 200, 30)).save(jpeg, format="JPEG")
    Image.new("RGBA", (8, 6), (255, 0, 0, 128)).save(png, format="PNG")
    assert as_jpeg(jpeg.getvalue()) == jpeg.getvalue()
    out = as_jpeg(png.getvalue())
    assert out[:3] == b"\xff\xd8\xff" and decode(out).size == (8, 6)
    with pytest.raises(BadImage):
        as_jpeg(b"<html>not a photo</html>")
