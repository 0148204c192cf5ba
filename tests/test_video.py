"""Frame sampling (pure index functions against hand-computed cases), decoding, preprocessing and bad input."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from petvr.data import video as video_module
from petvr.errors import DataError
from petvr.typed_config import dataclass_from_dict
from petvr.data.video import (
    CLIP_MEAN,
    CLIP_STD,
    SamplingConfig,
    decode_frames,
    decode_grid,
    load_video,
    normalize,
    order_positions,
    per_second_grid,
    probe_video,
    resize_center_crop,
    sample_frame_indices,
    segment_positions,
    select_frames,
    select_positions,
    subsample_positions,
)


SMALL = SamplingConfig(image_size=48)


@pytest.fixture(scope="module")
def videos(write_numbered_video, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    return {
        "three_seconds": write_numbered_video(folder / "three_seconds.mp4", 30),
        "short": write_numbered_video(folder / "short.mp4", 25),
        "long": write_numbered_video(folder / "long.mp4", 300, keyframe_interval=10),
    }


# --- pure sampling functions -------------------------------------------------------------------------------------

def test_per_second_grid_takes_the_first_frame_of_each_second():
    assert per_second_grid(35, 10, 1.0).tolist() == [0, 10, 20, 30]
    # CLIP4Clip: duration ceil(25 / 10) = 3 s, seconds 0..3, frame 30 does not exist.
    assert per_second_grid(25, 10, 1.0).tolist() == [0, 10, 20]


def test_per_second_grid_at_two_frames_per_second():
    assert per_second_grid(30, 10, 2.0).tolist() == [0, 5, 10, 15, 20, 25]
    assert per_second_grid(60, 30, 2.0).tolist() == [0, 15, 30, 45]


def test_per_second_grid_below_one_frame_per_second_and_above_fps():
    assert per_second_grid(100, 10, 0.5).tolist() == [0, 20, 40, 60, 80]
    assert per_second_grid(12, 4, 10.0).tolist() == list(range(12))


def test_per_second_grid_subclip_end_inclusive_like_clip4clip():
    # CLIP4Clip reads seconds start..end inclusive: [2, 5] gives 4 frames.
    assert per_second_grid(100, 10, 1.0, start=2, end=5).tolist() == [20, 30, 40, 50]
    assert per_second_grid(100, 10, 1.0, start=2.5, end=4.2).tolist() == [25, 35]
    assert per_second_grid(100, 10, 1.0, start=0.3, end=0.3).tolist() == [3]
    # An end past the video is clamped (DiDeMo spans are [0, 31] s on videos of at most 30 s).
    assert per_second_grid(45, 10, 1.0, start=0, end=31).tolist() == [0, 10, 20, 30, 40]


def test_per_second_grid_uses_the_exact_ntsc_rate():
    ntsc = Fraction(30000, 1001)
    grid = per_second_grid(5400, ntsc, 1.0)
    assert grid[100] == 2997  # floor(100 * 29.97); CLIP4Clip's int(fps) would give 2900, 3.2 s early
    assert len(grid) == 181  # 5400 frames last 180.18 s: seconds 0..180
    assert per_second_grid(5400, ntsc, 1.0, start=60, end=61).tolist() == [1798, 1828]


@pytest.mark.parametrize("start, end, problem", [
    (-1, 2, "before the video begins"), (4, 5, "past the end"), (2, 1, "before start"),
])
def test_per_second_grid_rejects_spans_outside_the_video(start, end, problem):
    with pytest.raises(ValueError, match=problem):
        per_second_grid(30, 10, 1.0, start=start, end=end)


def test_subsample_head_tail_uniform():
    assert subsample_positions(30, 12, "head").tolist() == list(range(12))
    assert subsample_positions(30, 12, "tail").tolist() == list(range(18, 30))
    # np.linspace(0, 29, 12, dtype=int): steps of 29/11 truncated.
    assert subsample_positions(30, 12, "uniform").tolist() == [0, 2, 5, 7, 10, 13, 15, 18, 21, 23, 26, 29]
    assert subsample_positions(5, 12, "uniform").tolist() == [0, 1, 2, 3, 4]


def test_segment_sampler_centres_at_eval():
    # 30 candidates, 12 segments: bounds 0,2,5,7,10,12,15,17,20,22,25,27,30; centres bound + length // 2.
    assert segment_positions(30, 12).tolist() == [1, 3, 6, 8, 11, 13, 16, 18, 21, 23, 26, 28]
    assert segment_positions(4, 12).tolist() == [0, 1, 2, 3]


def test_segment_sampler_random_but_seeded_in_training():
    bounds = np.arange(13) * 30 // 12
    draws = [segment_positions(30, 12, np.random.default_rng(seed)) for seed in range(20)]
    for draw in draws:
        assert np.all((draw >= bounds[:-1]) & (draw < bounds[1:]))
    assert np.array_equal(draws[0], segment_positions(30, 12, np.random.default_rng(0)))
    assert len({tuple(draw) for draw in draws}) > 1

    train = SamplingConfig(sampler="segment", train=True)
    assert np.array_equal(select_positions(30, train, np.random.default_rng(3)),
                          select_positions(30, train, np.random.default_rng(3)))
    evaluation = SamplingConfig(sampler="segment")
    assert select_positions(30, evaluation, np.random.default_rng(3)).tolist() == segment_positions(30, 12).tolist()


def test_frame_order_reverse_and_shuffle():
    positions = np.arange(6)
    assert order_positions(positions, "reverse").tolist() == [5, 4, 3, 2, 1, 0]
    shuffled = order_positions(positions, "shuffle", np.random.default_rng(1))
    assert sorted(shuffled.tolist()) == list(range(6)) and shuffled.tolist() != list(range(6))
    assert np.array_equal(shuffled, order_positions(positions, "shuffle", np.random.default_rng(1)))
    reverse = SamplingConfig(max_frames=3, subsample="head", frame_order="reverse")
    assert sample_frame_indices(100, 10, reverse).tolist() == [20, 10, 0]


def test_sampling_config_key_is_stable_and_checked():
    config = SamplingConfig(max_frames=8, feature_framerate=2)
    restored = dataclass_from_dict(SamplingConfig, config.to_dict(), "[data.sampling]")
    assert config == restored and hash(config) == hash(restored)
    assert config.key() == SamplingConfig(max_frames=8, feature_framerate=2.0).key() != SamplingConfig().key()
    assert config.decode_key() == SamplingConfig(max_frames=3, subsample="head", feature_framerate=2).decode_key()
    assert config.decode_key() != SamplingConfig(feature_framerate=2, image_size=112).decode_key()
    with pytest.raises(ValueError, match="subsample"):
        SamplingConfig(subsample="middle")
    unknown = r"\[data.sampling\] has unknown key\(s\) \['frames'\] \(did you mean 'max_frames'\?\); known: \["
    with pytest.raises(ValueError, match=unknown):
        dataclass_from_dict(SamplingConfig, {"frames": 3}, "[data.sampling]")


# --- decoding and preprocessing ----------------------------------------------------------------------------------

def test_probe_reads_the_header(videos):
    info = probe_video(videos["long"])
    assert (info.frame_count, info.fps, info.width, info.height, info.codec) == (300, 10, 64, 48, "h264")
    assert info.duration == pytest.approx(30.0)


def test_decode_returns_the_sampled_frames(frame_numbers, videos):
    clip = decode_frames(videos["long"], SMALL)
    expected = [0, 20, 50, 70, 100, 130, 150, 180, 210, 230, 260, 290]  # grid 0..290 step 10, linspace positions
    assert clip.frame_indices.tolist() == expected
    assert frame_numbers(clip.frames).tolist() == expected
    assert clip.timestamps == pytest.approx(np.array(expected) / 10)
    assert clip.frames.shape == (12, 48, 48, 3) and clip.frames.dtype == np.uint8


def test_decode_subclip_of_a_long_video_with_seeking(frame_numbers, videos):
    config = SamplingConfig(image_size=48, feature_framerate=2, sampler="segment", train=True)
    clip = decode_frames(videos["long"], config, start=12.3, end=20.0, rng=np.random.default_rng(5))
    assert frame_numbers(clip.frames).tolist() == clip.frame_indices.tolist()
    assert clip.frame_indices.min() >= 123 and clip.frame_indices.max() <= 205
    reversed_clip = decode_frames(videos["long"], SamplingConfig(image_size=48, frame_order="reverse"), 25, 28)
    assert frame_numbers(reversed_clip.frames).tolist() == [280, 270, 260, 250]


def test_seeking_decodes_only_from_the_keyframe_before_the_clip(frame_numbers, videos, monkeypatch):
    decoded_times: list[float] = []
    original = video_module._frame_time

    def counting(frame, stream, start_pts):
        decoded_times.append(original(frame, stream, start_pts))
        return decoded_times[-1]

    with av.open(str(videos["long"])) as container:  # keyframes at most 10 frames apart (x264 adds scene cuts)
        keyframes = [round(frame.time * 10) for frame in container.decode(video=0) if frame.key_frame]
    last_keyframe = max(number for number in keyframes if number <= 250)

    monkeypatch.setattr(video_module, "_frame_time", counting)
    clip = decode_frames(videos["long"], SMALL, start=25, end=28)
    assert frame_numbers(clip.frames).tolist() == [250, 260, 270, 280]
    # Decoding starts at the keyframe before frame 250 and stops at frame 280 (seeking on past later keyframes).
    decoded_numbers = sorted(round(time * 10) for time in decoded_times)
    assert decoded_numbers[0] == last_keyframe and decoded_numbers[-1] == 280
    assert len(decoded_numbers) <= 281 - last_keyframe


def test_grid_then_selection_equals_direct_decoding(frame_numbers, videos):
    config = SamplingConfig(image_size=48, max_frames=5, sampler="segment", train=True, frame_order="shuffle")
    grid = decode_grid(videos["long"], config, start=3, end=21)
    assert frame_numbers(grid.frames).tolist() == list(range(30, 220, 10))
    selected = select_frames(grid, config, np.random.default_rng(7))
    direct = decode_frames(videos["long"], config, start=3, end=21, rng=np.random.default_rng(7))
    assert selected.frame_indices.tolist() == direct.frame_indices.tolist()
    assert np.array_equal(selected.frames, direct.frames)


def test_short_video_is_padded_and_masked(videos):
    frames, frame_mask, timestamps = load_video(videos["short"], SMALL)
    assert frames.shape == (12, 3, 48, 48) and frames.dtype == torch.float32
    assert frame_mask.tolist() == [True] * 3 + [False] * 9
    assert torch.all(frames[3:] == 0) and not torch.all(frames[:3] == 0)
    assert timestamps[:3].tolist() == pytest.approx([0.0, 1.0, 2.0]) and torch.isnan(timestamps[3:]).all()


def test_normalize_uses_clip_mean_and_std():
    grey = np.full((2, 4, 4, 3), 200, np.uint8)
    tensor = normalize(grey)
    assert tensor.shape == (2, 3, 4, 4)
    for channel in range(3):
        expected = (200 / 255 - CLIP_MEAN[channel]) / CLIP_STD[channel]
        assert tensor[:, channel].flatten().tolist() == pytest.approx([expected] * 32, abs=1e-6)


@pytest.mark.parametrize("size", [(64, 48), (48, 90), (333, 250)])
def test_resize_center_crop_is_clips_torchvision_preprocessing(size):
    width, height = size
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))
    clip_transform = transforms.Compose([transforms.Resize(32, interpolation=transforms.InterpolationMode.BICUBIC),
                                         transforms.CenterCrop(32)])
    assert np.array_equal(resize_center_crop(image, 32), np.asarray(clip_transform(image)))


# --- bad input: every problem is a DataError naming the file ------------------------------------------------------

def _audio_only(path: Path, write_numbered_video) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for index in range(5):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, index * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _video_stream_without_frames(path: Path, write_numbered_video) -> Path:
    path = path.with_suffix(".mkv")  # MP4 drops a stream without packets; Matroska keeps it
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=16000)
        for index in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, index * 1024
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
    return path


def _unknown_codec(path: Path, write_numbered_video) -> Path:
    write_numbered_video(path.with_suffix(".tmp.avi"), 10, codec="mpeg4")
    data = path.with_suffix(".tmp.avi").read_bytes()
    assert b"FMP4" in data
    path.write_bytes(data.replace(b"FMP4", b"QQQQ"))
    return path


def _truncated(path: Path, write_numbered_video) -> Path:
    data = write_numbered_video(path.with_suffix(".full.mp4"), 30).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _truncated_faststart(path: Path, write_numbered_video) -> Path:
    """Moov atom first (as web videos are), then half the frames cut off: opens, but decoding ends early."""
    full = write_numbered_video(path.with_suffix(".full.mp4"), 100)
    faststart = path.with_suffix(".faststart.mp4")
    with av.open(str(full)) as source, av.open(str(faststart), "w", options={"movflags": "faststart"}) as target:
        stream = target.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                target.mux(packet)
    data = faststart.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("make, problem", [
    (lambda path, _: path, "not found"),
    (_truncated, "cannot open"),
    (_truncated_faststart, "truncated|decoding failed"),
    (lambda path, _: path.write_bytes(np.random.default_rng(0).bytes(4000)) and path, "cannot open"),
    (_audio_only, "no video stream"),
    (_video_stream_without_frames, "no decodable frames"),
    (_unknown_codec, "unsupported codec"),
])
def test_bad_input_raises_data_error_naming_the_file(tmp_path, make, problem, write_numbered_video):
    path = make(tmp_path / "bad.mp4", write_numbered_video)
    with pytest.raises(DataError, match=problem) as error:
        load_video(path, SMALL)
    assert error.value.path == str(path) and str(path) in str(error.value)


@pytest.mark.parametrize("start, end", [(3.5, 5.0), (-1.0, 2.0), (2.0, 1.0)])
def test_span_outside_the_video_raises_data_error(videos, start, end):
    with pytest.raises(DataError) as error:
        decode_frames(videos["three_seconds"], SMALL, start=start, end=end)
    assert str(videos["three_seconds"]) in str(error.value)
