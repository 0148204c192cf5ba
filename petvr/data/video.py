"""Video decoding and frame sampling (PyAV): which frames a clip contributes, decoding just those, CLIP preprocessing.

Sampling happens in two steps, both pure functions of the video's frame count and frame rate:

1. ``per_second_grid`` lists the clip's *candidate* frames, CLIP4Clip's convention: ``feature_framerate`` frames per
   second of the (sub)clip, the first frame of each second when it is 1 (``rawvideo_util.py``).
2. ``select_positions`` picks up to ``max_frames`` of those candidates: head / tail / uniform linspace (CLIP4Clip's
   ``slice_framepos`` 0 / 1 / 2) for the ``per_second`` sampler, or one candidate per equal segment (TSN) for the
   ``segment`` sampler, at a random offset when training and at the segment centre otherwise. Then the frame order
   (forward / reverse / shuffle) is applied.

Because the segment sampler draws from the same candidate grid, a frame cache that stores the decoded grid once
(``decode_grid``) serves every subsample mode, every ``max_frames`` and fresh random training offsets each epoch.
Raise ``feature_framerate`` (DGL decodes 3 fps videos) for a denser pool; at or above the video's fps every frame is a
candidate.

Frame rates that are not whole numbers (NTSC 29.97) are used exactly, as fractions. CLIP4Clip truncates fps to an int
and places second ``s`` at frame ``s * int(fps)``, which drifts 3% (5.4 s after three minutes at 29.97 fps) and so
misplaces clips inside long videos. Here second ``s`` of a clip starting at ``start`` is the frame on screen at
``start + s`` seconds, ``floor((start + s) * fps)``, which is CLIP4Clip's frame exactly whenever fps is a whole number
(and, within a second, whenever ``feature_framerate`` divides it; otherwise the frames of a second are evenly spaced in
time rather than CLIP4Clip's ``int(fps) // rate`` stride).

Decoding (``decode_frames``, ``decode_grid``) seeks only where seeking skips work: when the keyframe before the next
wanted frame lies beyond the frame last decoded. Short clips and dense grids decode sequentially. Every problem with the
file raises ``DataError`` naming it; a clip never silently turns into zeros. A frame the decoder had to repair
(FFmpeg's error concealment, which still yields a picture) is kept, with a ``DataWarning`` naming the file and the time
of the first such frame; a packet the decoder refuses raises ``DataError`` naming the time where decoding stopped.
"""
from __future__ import annotations

import bisect
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, NamedTuple

import av
import numpy as np
import torch
from PIL import Image

from petvr.errors import DataError, DataWarning

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

SUBSAMPLE_MODES = ("uniform", "head", "tail")
SAMPLERS = ("per_second", "segment")
FRAME_ORDERS = ("forward", "reverse", "shuffle")

SEEK_GAP_WITHOUT_INDEX_S = 4.0
"""Without a keyframe index in the container, seek when the next wanted frame is this many seconds ahead."""


@dataclass(frozen=True)
class SamplingConfig:
    """How frames are sampled from a clip and preprocessed for CLIP. Frozen, so it hashes; ``key()`` is stable text.

    ``subsample`` applies to the ``per_second`` sampler (CLIP4Clip ``slice_framepos``: uniform 2, head 0, tail 1).
    ``train`` draws the ``segment`` sampler's offsets at random (TSN); otherwise each segment gives its centre.
    """

    max_frames: int = 12
    feature_framerate: float = 1.0
    subsample: str = "uniform"
    sampler: str = "per_second"
    frame_order: str = "forward"
    image_size: int = 224
    train: bool = False
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(value) for value in self.mean))
        object.__setattr__(self, "std", tuple(float(value) for value in self.std))
        object.__setattr__(self, "feature_framerate", float(self.feature_framerate))
        problems = []
        if int(self.max_frames) != self.max_frames or self.max_frames < 1:
            problems.append(f"max_frames must be a positive integer, got {self.max_frames!r}")
        if not self.feature_framerate > 0 or not math.isfinite(self.feature_framerate):
            problems.append(f"feature_framerate must be positive, got {self.feature_framerate!r}")
        if self.subsample not in SUBSAMPLE_MODES:
            problems.append(f"subsample must be one of {SUBSAMPLE_MODES}, got {self.subsample!r}")
        if self.sampler not in SAMPLERS:
            problems.append(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.frame_order not in FRAME_ORDERS:
            problems.append(f"frame_order must be one of {FRAME_ORDERS}, got {self.frame_order!r}")
        if int(self.image_size) != self.image_size or self.image_size < 1:
            problems.append(f"image_size must be a positive integer, got {self.image_size!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            problems.append(f"mean and std need 3 values each, std positive; got {self.mean} and {self.std}")
        if problems:
            raise ValueError("SamplingConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    def key(self) -> str:
        """Every setting as sorted JSON: equal configs give equal keys across processes and runs."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def decode_key(self) -> str:
        """Only the settings that change the decoded uint8 candidate grid (what the frame cache stores)."""
        return json.dumps({"feature_framerate": self.feature_framerate, "image_size": self.image_size}, sort_keys=True)


# ----------------------------------------------------------------------------------------------------------------
# Pure sampling functions: frame indices from frame count and fps, no decoding.


def _exact(value: float | Fraction) -> Fraction:
    """Seconds and rates as fractions (0.3 s is 3/10, not 0.2999...), so frame arithmetic has no rounding surprises."""
    return value if isinstance(value, Fraction) else Fraction(value).limit_denominator(1_000_000)


def clip_bounds(frame_count: int, fps: float | Fraction, start: float | None, end: float | None) -> tuple[float, float]:
    """Check ``start``/``end`` (seconds) against the video and return the clip's ``(start, end)``.

    ``end`` past the video is clamped to its duration, as CLIP4Clip does: DiDeMo's spans are [0, 31] s on videos cut to
    at most 30 s. A start outside the video, a negative time or ``end < start`` raises ``ValueError``.
    """
    duration = frame_count / float(fps)
    start = 0.0 if start is None else float(start)
    end = duration if end is None else float(end)
    if not (math.isfinite(start) and math.isfinite(end)):
        raise ValueError(f"start/end must be finite seconds, got start={start} end={end}")
    if start < 0:
        raise ValueError(f"start {start:g} s is before the video begins")
    if end < start:
        raise ValueError(f"end {end:g} s is before start {start:g} s")
    if start >= duration:
        raise ValueError(f"start {start:g} s is past the end of the video ({duration:.3f} s)")
    return start, min(end, duration)


def per_second_grid(frame_count: int, fps: float | Fraction, feature_framerate: float,
                    start: float | None = None, end: float | None = None) -> np.ndarray:
    """Candidate frame indices ``(N,)`` of a clip, CLIP4Clip's per-second convention.

    For every second ``s = 0, 1, ..., floor(end - start)`` of the clip (``end`` inclusive, as CLIP4Clip's
    ``arange(start, end + 1)``) take the frames on screen at ``start + s + j / feature_framerate`` seconds,
    ``j < feature_framerate``: frame ``floor(time * fps)``. With ``feature_framerate`` below 1 there is one frame
    every ``1 / rate`` seconds. Frames past the video's end are dropped; a rate above fps gives every frame once.
    """
    if frame_count < 1:
        raise ValueError("the video has no frames")
    start, end = clip_bounds(frame_count, fps, start, end)
    fps, rate, start_exact = _exact(fps), _exact(feature_framerate), _exact(start)
    seconds = math.floor(_exact(end) - start_exact) + 1
    times = (start_exact + Fraction(j) / rate for j in range(math.ceil(seconds * rate)))
    indices = [math.floor(time * fps) for time in times]
    return np.unique(np.array([index for index in indices if index < frame_count], dtype=np.int64))


def subsample_positions(num_candidates: int, max_frames: int, subsample: str) -> np.ndarray:
    """Positions ``(min(N, max_frames),)`` into ``N`` candidates: all of them, or head / tail / uniform linspace."""
    if num_candidates <= max_frames:
        return np.arange(num_candidates)
    if subsample == "head":
        return np.arange(max_frames)
    if subsample == "tail":
        return np.arange(num_candidates - max_frames, num_candidates)
    if subsample == "uniform":
        return np.linspace(0, num_candidates - 1, num=max_frames, dtype=int)
    raise ValueError(f"unknown subsample mode {subsample!r}; choose from {SUBSAMPLE_MODES}")


def segment_positions(num_candidates: int, max_frames: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """TSN: split ``N`` candidates into ``max_frames`` equal segments and take one position per segment.

    With ``rng`` the position is uniform within its segment (training); without, it is the segment centre. Fewer
    candidates than segments gives every candidate once (the rest is padding, marked by the frame mask).
    """
    if num_candidates <= max_frames:
        return np.arange(num_candidates)
    bounds = np.arange(max_frames + 1) * num_candidates // max_frames  # segment s is [bounds[s], bounds[s + 1])
    lengths = np.diff(bounds)
    if rng is None:
        return bounds[:-1] + lengths // 2
    return bounds[:-1] + rng.integers(0, lengths)


def order_positions(positions: np.ndarray, frame_order: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """Apply CLIP4Clip's frame order (0 forward, 1 reverse, 2 shuffle) to the selected positions."""
    if frame_order == "forward":
        return positions
    if frame_order == "reverse":
        return positions[::-1].copy()
    if frame_order == "shuffle":
        return (rng if rng is not None else np.random.default_rng()).permutation(positions)
    raise ValueError(f"unknown frame order {frame_order!r}; choose from {FRAME_ORDERS}")


def select_positions(num_candidates: int, config: SamplingConfig,
                     rng: np.random.Generator | None = None) -> np.ndarray:
    """Positions ``(T,)``, ``T <= max_frames``, into a clip's candidate grid, in the order the model sees them.

    ``rng`` drives the random training offsets and the shuffle order; ``None`` draws fresh randomness where the config
    asks for it.
    """
    if config.sampler == "segment":
        segment_rng = (rng if rng is not None else np.random.default_rng()) if config.train else None
        positions = segment_positions(num_candidates, config.max_frames, segment_rng)
    else:
        positions = subsample_positions(num_candidates, config.max_frames, config.subsample)
    return order_positions(positions, config.frame_order, rng)


def sample_frame_indices(frame_count: int, fps: float | Fraction, config: SamplingConfig,
                         start: float | None = None, end: float | None = None,
                         rng: np.random.Generator | None = None) -> np.ndarray:
    """The native frame indices ``(T,)`` a clip gives the model, in model order: grid, then selection."""
    grid = per_second_grid(frame_count, fps, config.feature_framerate, start, end)
    return grid[select_positions(len(grid), config, rng)]


# ----------------------------------------------------------------------------------------------------------------
# Decoding.


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video's first video stream. ``frame_count_exact`` is False when the count
    is estimated from the duration (e.g. WebM has no frame count)."""

    path: str
    frame_count: int
    fps: Fraction
    width: int
    height: int
    codec: str
    frame_count_exact: bool

    @property
    def duration(self) -> float:
        return self.frame_count / float(self.fps)


@dataclass
class DecodedClip:
    """Decoded, resized and centre-cropped frames of one clip, before normalisation (what the cache stores).

    ``frames`` ``(T, H, W, 3)`` uint8 RGB, ``timestamps`` ``(T,)`` seconds from the start of the video,
    ``frame_indices`` ``(T,)`` the native frame numbers.
    """

    path: str
    frames: np.ndarray
    timestamps: np.ndarray
    frame_indices: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)

    def take(self, positions: np.ndarray) -> DecodedClip:
        return DecodedClip(self.path, self.frames[positions], self.timestamps[positions], self.frame_indices[positions])


class VideoSample(NamedTuple):
    """The model's input for one clip: ``frames`` ``(T, 3, H, W)`` float32 (CLIP-normalised, zeros where padded),
    ``frame_mask`` ``(T,)`` bool (True for real frames), ``timestamps`` ``(T,)`` float64 seconds (NaN where padded)."""

    frames: torch.Tensor
    frame_mask: torch.Tensor
    timestamps: torch.Tensor


def _open(path: str | Path) -> av.container.InputContainer:
    path = Path(path)
    if not path.exists():
        raise DataError(path, "video file not found")
    if not path.is_file():
        raise DataError(path, "not a file")
    try:
        return av.open(str(path), mode="r")
    except av.error.FFmpegError as error:
        raise DataError(path, f"cannot open as a video (corrupt, truncated or not a video file): {error}") from None


def _video_stream(container: av.container.InputContainer, path: str | Path) -> av.video.stream.VideoStream:
    if not container.streams.video:
        kinds = ", ".join(stream.type for stream in container.streams) or "none"
        raise DataError(path, f"no video stream (streams found: {kinds})")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise DataError(path, "unsupported codec: this FFmpeg build has no decoder for the video stream")
    return stream


def _stream_info(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                 path: str | Path) -> VideoInfo:
    fps = next((Fraction(rate) for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate)
                if rate is not None and rate > 0), None)
    if fps is None:
        raise DataError(path, "the video stream has no frame rate")
    exact = bool(stream.frames and stream.frames > 0)
    if exact:
        frame_count = int(stream.frames)
    elif stream.duration is not None:
        frame_count = round(stream.duration * stream.time_base * fps)
    elif container.duration is not None:
        frame_count = round(Fraction(container.duration, av.time_base) * fps)
    else:
        raise DataError(path, "the container gives neither a frame count nor a duration")
    context = stream.codec_context
    return VideoInfo(str(path), frame_count, fps, context.width, context.height, context.name, exact)


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, fps, size and codec of a video, from its container header (no decoding)."""
    with _open(path) as container:
        return _stream_info(container, _video_stream(container, path), path)


def resize_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """CLIP's ``Resize(size, bicubic)`` + ``CenterCrop(size)`` on a PIL image: ``(size, size, 3)`` uint8 RGB.

    Same arithmetic as torchvision: the short side becomes ``size``, the long side ``int(size * long / short)``, and
    the crop starts at ``round((resized - size) / 2)``.
    """
    width, height = image.size
    if width <= height:
        resized_width, resized_height = size, int(size * height / width)
    else:
        resized_width, resized_height = int(size * width / height), size
    left = int(round((resized_width - size) / 2.0))
    top = int(round((resized_height - size) / 2.0))
    resized = image.convert("RGB").resize((resized_width, resized_height), Image.Resampling.BICUBIC)
    return np.array(resized.crop((left, top, left + size, top + size)))


def _frame_time(frame: av.VideoFrame, stream: av.video.stream.VideoStream, start_pts: int) -> float | None:
    """Presentation time in seconds from the stream's start; None for a frame without a timestamp."""
    if frame.pts is None:
        return None
    return float((frame.pts - start_pts) * stream.time_base)


def _keyframes(stream: av.video.stream.VideoStream, start_pts: int) -> tuple[list[float], list[int]]:
    """Keyframes from the container's index: ``(times in seconds, presentation timestamps to seek to)``, sorted.

    Index timestamps are decode times; with B-frames they run ahead of presentation times by a constant delay (the
    first entry's offset from the stream start), which is added back: seeking works in presentation time, and a seek
    to the raw index timestamp lands one keyframe early. Empty where the format keeps no index up front.
    """
    entries = stream.index_entries
    if len(entries) == 0:
        return [], []
    delay = start_pts - entries[0].timestamp
    keyframes = sorted(entry.timestamp + delay for entry in entries if entry.is_keyframe)
    return [float((timestamp - start_pts) * stream.time_base) for timestamp in keyframes], keyframes


def _decode_times(container: av.container.InputContainer, stream: av.video.stream.VideoStream, info: VideoInfo,
                  target_times: list[float], image_size: int) -> tuple[list[tuple[float, np.ndarray] | None],
                                                                       float | None]:
    """For each target time (sorted seconds), the first frame at or after it (within half a frame), preprocessed; and
    the time of the first decoded frame the decoder flagged as damaged (concealed errors), or ``None``.

    Decodes forward and seeks only when the keyframe before the next target lies beyond the last decoded frame
    (seeking then skips whole groups of pictures). Targets past the last decodable frame come back as ``None``. A
    decoder error raises ``DataError`` naming the file and the time of the last frame decoded before it.
    """
    start_pts = stream.start_time or 0
    frame_period = 1.0 / float(info.fps)
    half_frame = frame_period / 2
    keyframe_times, keyframe_timestamps = _keyframes(stream, start_pts)
    results: list[tuple[float, np.ndarray] | None] = [None] * len(target_times)
    first_damaged: float | None = None

    def seek_timestamp(position: float, target: float) -> int | None:
        """Where to seek for ``target``, or None when decoding on from ``position`` is no more work."""
        if not keyframe_times:
            if target - position <= SEEK_GAP_WITHOUT_INDEX_S:
                return None
            return start_pts + int((target - half_frame) / stream.time_base)
        before = bisect.bisect_right(keyframe_times, target + half_frame) - 1
        if before < 0 or keyframe_times[before] <= position + frame_period:
            return None
        return keyframe_timestamps[before]

    position = keyframe_times[0] if keyframe_times else 0.0
    frames = container.decode(stream)
    next_target = 0
    seeking_allowed = True
    try:
        while next_target < len(target_times):
            target = target_times[next_target]
            timestamp = seek_timestamp(position, target) if seeking_allowed else None
            just_sought = timestamp is not None
            if just_sought:
                container.seek(timestamp, stream=stream, backward=True)
                frames = container.decode(stream)
            stream_ended = True
            for frame in frames:
                time = _frame_time(frame, stream, start_pts)
                time = position + frame_period if time is None else time
                if just_sought and time > target + half_frame:
                    # The seek landed past the target (an index that does not match the stream): decode from the start.
                    container.seek(start_pts, stream=stream, backward=True)
                    frames = container.decode(stream)
                    seeking_allowed, stream_ended = False, False
                    break
                just_sought = False
                position = time
                if frame.is_corrupt and first_damaged is None:
                    first_damaged = time
                if time < target - half_frame:
                    continue
                image = resize_center_crop(frame.to_image(), image_size)
                while next_target < len(target_times) and time >= target_times[next_target] - half_frame:
                    results[next_target] = (time, image)
                    next_target += 1
                stream_ended = False
                break
            if stream_ended:
                break
    except av.error.FFmpegError as error:
        raise DataError(info.path, f"decoding failed after {position:.2f} s (corrupt or truncated file): "
                                   f"{error}") from None
    return results, first_damaged


def _decode_indices(path: str | Path, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                    info: VideoInfo, indices: np.ndarray, image_size: int) -> DecodedClip:
    """Decode the frames at native ``indices`` (any order, no repeats needed) into a ``DecodedClip`` in that order."""
    wanted = np.unique(indices)
    decoded, first_damaged = _decode_times(container, stream, info, [float(index / info.fps) for index in wanted],
                                           image_size)
    if first_damaged is not None:
        warnings.warn(DataWarning(f"{path}: the decoder reported errors in this video, first in the frame at "
                                  f"{first_damaged:.3f} s; it concealed them and its frames are used"), stacklevel=4)
    found = [result is not None for result in decoded]
    if not any(found):
        raise DataError(path, f"no decodable frames (the header promises {info.frame_count} frames at "
                              f"{float(info.fps):g} fps)")
    missing = wanted[~np.array(found)]
    if info.frame_count_exact and len(missing) and missing[0] < info.frame_count - float(info.fps):
        raise DataError(path, f"truncated: the header promises {info.frame_count} frames ({info.duration:.2f} s) "
                              f"but decoding stops before frame {missing[0]} ({missing[0] / float(info.fps):.2f} s)")
    by_index = {int(index): result for index, result in zip(wanted, decoded) if result is not None}
    kept = [int(index) for index in indices if int(index) in by_index]
    return DecodedClip(
        path=str(path),
        frames=np.stack([by_index[index][1] for index in kept]),
        timestamps=np.array([by_index[index][0] for index in kept], dtype=np.float64),
        frame_indices=np.array(kept, dtype=np.int64),
    )


def _decode(path: str | Path, config: SamplingConfig, start: float | None, end: float | None,
            choose: Callable[[np.ndarray], np.ndarray]) -> DecodedClip:
    """Open, compute the candidate grid, let ``choose(grid)`` pick native indices, decode them."""
    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        info = _stream_info(container, stream, path)
        try:
            grid = per_second_grid(info.frame_count, info.fps, config.feature_framerate, start, end)
        except ValueError as error:
            raise DataError(path, str(error)) from None
        return _decode_indices(path, container, stream, info, choose(grid), config.image_size)


def decode_grid(path: str | Path, config: SamplingConfig, start: float | None = None,
                end: float | None = None) -> DecodedClip:
    """Every candidate frame of the clip (the per-second grid), resized and cropped: what the frame cache stores."""
    return _decode(path, config, start, end, lambda grid: grid)


def decode_frames(path: str | Path, config: SamplingConfig, start: float | None = None, end: float | None = None,
                  rng: np.random.Generator | None = None) -> DecodedClip:
    """The clip's selected frames in model order (``T <= max_frames``), decoding only those."""
    return _decode(path, config, start, end, lambda grid: grid[select_positions(len(grid), config, rng)])


def select_frames(grid: DecodedClip, config: SamplingConfig, rng: np.random.Generator | None = None) -> DecodedClip:
    """Pick the model's frames from a decoded candidate grid: the same choice ``decode_frames`` makes."""
    return grid.take(select_positions(len(grid), config, rng))


def normalize(frames: np.ndarray, mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` -> float32 ``(T, 3, H, W)``: ``(x / 255 - mean) / std`` per channel.

    Computed as one channel-first copy and one multiply-add (``x * 1 / (255 std) - mean / std``), about five times
    faster than dividing the channel-last view in place; ``out`` (contiguous ``(T, 3, H, W)``) receives the result.
    """
    count, height, width, _ = frames.shape
    out = torch.empty(count, 3, height, width) if out is None else out
    out.copy_(torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2))
    scale = torch.tensor([1.0 / (255.0 * value) for value in std], dtype=torch.float32).view(1, 3, 1, 1)
    offset = torch.tensor([-m / s for m, s in zip(mean, std)], dtype=torch.float32).view(1, 3, 1, 1)
    return out.mul_(scale).add_(offset)


def to_model_input(clip: DecodedClip, config: SamplingConfig) -> VideoSample:
    """Normalise and zero-pad to ``max_frames``: ``frames (T, 3, H, W)``, ``frame_mask (T,)``, ``timestamps (T,)``."""
    if len(clip) == 0:
        raise DataError(clip.path, "no frames to give the model")
    if len(clip) > config.max_frames:
        raise ValueError(f"{clip.path}: {len(clip)} frames exceed max_frames={config.max_frames}; select them first")
    size, count = config.image_size, len(clip)
    frames = torch.empty(config.max_frames, 3, size, size)
    normalize(clip.frames, config.mean, config.std, out=frames[:count])
    frames[count:] = 0.0
    frame_mask = torch.zeros(config.max_frames, dtype=torch.bool)
    frame_mask[:count] = True
    timestamps = torch.full((config.max_frames,), float("nan"), dtype=torch.float64)
    timestamps[:count] = torch.from_numpy(clip.timestamps)
    return VideoSample(frames, frame_mask, timestamps)


def load_video(path: str | Path, config: SamplingConfig, start: float | None = None, end: float | None = None,
               rng: np.random.Generator | None = None) -> VideoSample:
    """Decode a clip on the fly and give the model's input (no cache): ``decode_frames`` then ``to_model_input``."""
    return to_model_input(decode_frames(path, config, start, end, rng), config)


def file_signature(path: str | Path) -> tuple[str, int, int]:
    """``(absolute path, size in bytes, mtime in ns)``: what identifies a video file's current content cheaply."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise DataError(path, "video file not found") from None
    return str(Path(path).resolve()), status.st_size, status.st_mtime_ns
