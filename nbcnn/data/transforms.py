"""Image transforms: AlexNet's crops, flips, mean subtraction and PCA ("lighting") colour noise.

Images come in as uint8 (H, W, C) arrays and leave as float32 (C, H, W) on a [0, 1] pixel
scale minus the per-channel training mean. Random choices come from a numpy Generator
passed in, so a batch's augmentation is a pure function of the seed it was drawn with.
"""

import numpy as np

# The paper's lighting noise: alpha ~ N(0, 0.1) per eigenvector, once per image.
LIGHTING_STD = 0.1


def resize_short(img, size):
    """Resize (bilinear, Pillow) so the shorter side is `size`, keeping the aspect ratio."""
    h, w = img.shape[:2]
    if min(h, w) == size:
        return img
    from PIL import Image
    if h <= w:
        new = (max(1, round(w * size / h)), size)
    else:
        new = (size, max(1, round(h * size / w)))
    mode_img = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img)
    out = np.asarray(mode_img.resize(new, Image.BILINEAR), dtype=np.uint8)
    return out[..., None] if out.ndim == 2 else out


def crop(img, top, left, size):
    return img[top:top + size, left:left + size]


def center_crop(img, size):
    h, w = img.shape[:2]
    return crop(img, (h - size) // 2, (w - size) // 2, size)


def random_crop(img, size, rng):
    h, w = img.shape[:2]
    return crop(img, int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1)), size)


def pad(img, p):
    """Zero-pad `p` pixels on every side."""
    if p == 0:
        return img
    return np.pad(img, ((p, p), (p, p), (0, 0)))


def hflip(img):
    return img[:, ::-1]


def ten_crops(img, size):
    """The four corner crops and the centre crop, then the same five mirrored (the paper's test)."""
    h, w = img.shape[:2]
    five = [crop(img, 0, 0, size), crop(img, 0, w - size, size), crop(img, h - size, 0, size),
            crop(img, h - size, w - size, size), center_crop(img, size)]
    return five + [hflip(c) for c in five]


class Transform:
    """The whole per-image pipeline of one run.

    train: resize short side to `resize`, zero-pad `pad`, random `crop`, mirror with p=0.5
    when `flip`, to [0, 1], lighting noise when `eigvec` is given, minus `mean`.
    eval: resize, centre crop (or the ten crops), to [0, 1], minus `mean`.
    """

    def __init__(self, resize, crop, pad=0, flip=True, mean=None, eigval=None, eigvec=None,
                 lighting_std=LIGHTING_STD):
        if crop > resize + 2 * pad:
            raise ValueError(f"crop {crop} is larger than the resized image {resize} + padding {pad}")
        self.resize, self.crop, self.pad, self.flip = int(resize), int(crop), int(pad), bool(flip)
        self.mean = None if mean is None else np.asarray(mean, np.float32)
        self.eigval = None if eigval is None else np.asarray(eigval, np.float32)
        self.eigvec = None if eigvec is None else np.asarray(eigvec, np.float32)
        self.lighting_std = float(lighting_std)

    def to_float(self, img):
        """uint8 (H, W, C) -> float32 (C, H, W) in [0, 1], minus the mean."""
        x = img.astype(np.float32).transpose(2, 0, 1) / np.float32(255)
        if self.mean is not None:
            x -= self.mean[:, None, None]
        return np.ascontiguousarray(x)

    def lighting(self, x, rng):
        """Add eigvec @ (alpha * eigval) to every pixel, alpha ~ N(0, lighting_std) (Sec. 4.1)."""
        if self.eigvec is None or self.lighting_std == 0:
            return x
        alpha = rng.normal(0.0, self.lighting_std, size=len(self.eigval)).astype(np.float32)
        x += (self.eigvec @ (alpha * self.eigval))[:, None, None]
        return x

    def train(self, img, rng):
        img = pad(resize_short(img, self.resize), self.pad)
        img = random_crop(img, self.crop, rng)
        if self.flip and rng.random() < 0.5:
            img = hflip(img)
        return self.lighting(self.to_float(img), rng)

    def eval(self, img):
        return self.to_float(center_crop(resize_short(img, self.resize), self.crop))

    def eval_ten(self, img):
        """(10, C, crop, crop): the ten crops of one image."""
        img = resize_short(img, self.resize)
        return np.stack([self.to_float(c) for c in ten_crops(img, self.crop)])
