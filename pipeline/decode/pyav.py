"""The CPU backend: in-process FFmpeg through PyAV, single-threaded, decoding only what is needed.

How one video is decoded (see :func:`decode_pyav`):

1. **Index** (:func:`index_video`): demux every packet of the first video stream without
   decoding. The packets give the frame count, the presentation order (sorted timestamps) and the
   keyframe positions; they are kept in memory (a few MB for a clip), so the decode step never
   reads or seeks the file again.
2. **Plan** (:func:`plan_groups`): pick the target frames with
   :func:`pipeline.sampling.segment_midpoints` and, for each, the keyframe its group of
   pictures (GOP) starts at. GOPs without a target are never decoded.
3. **Decode** (:func:`decode_planned`): feed the packets of the needed GOPs to the decoder,
   jumping over the others (a flush of the decoder stands in for a seek). Packets that hold no
   target are fed with ``skip_frame=NONREF``, so non-reference pictures (most B-frames) are
   not even decoded; frames are matched to targets by timestamp, which makes B-frame reordering
   and variable frame rates harmless.
4. **Convert** only the target frames: one ``swscale`` call resizes (area filter, the short side
   to S) and converts to RGB, then the centre crop and the display rotation are applied.

Streams whose packets carry no usable timestamps (a raw ``.h264`` elementary stream), whose
decoder returns timestamps out of order (Xvid's packed B-frames in AVI), and the rare files
where a target never comes out of the planned decode (damaged packets) take the sequential
path: decode everything, count the frames the decoder returns and convert the targets.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from pipeline.decode.common import DecodedVideo, DecodeError, resized_shape
from pipeline.sampling import segment_midpoints

__all__ = [
    "VideoIndex",
    "decode_packet",
    "decode_planned",
    "decode_pyav",
    "decode_sequential",
    "frame_to_rgb",
    "index_video",
    "open_video",
    "plan_groups",
]

log = logging.getLogger(__name__)

# One scaler per process: it keeps swscale's context between frames of the same geometry.
_REFORMATTER = VideoReformatter()


@dataclass
class VideoIndex:
    """The demuxed packets of a video stream and what they tell about its frames.

    Attributes:
        packets: every data-bearing packet of the stream, in decode order.
        frame_pts: the timestamps of the frames in presentation order (sorted), in units of
            ``time_base``; ``None`` when the packets carry no usable (present, unique)
            timestamps.
        num_frames: frames in the stream: packets that hold a frame to show.
        fps: average frame rate, frames per second (0.0 if unknown).
        duration_s: duration in seconds, from the timestamps when present.
        time_base: the stream's time base, seconds per timestamp unit.
        codec: FFmpeg codec name.
    """

    packets: list[av.Packet]
    frame_pts: list[int] | None
    num_frames: int
    fps: float
    duration_s: float
    time_base: Fraction
    codec: str


def open_video(
    path: Path,
) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open a file and select its first real video stream.

    Args:
        path: the video file.

    Returns:
        ``(container, stream)``; the caller closes the container.

    Raises:
        DecodeError: missing or empty file, not readable by FFmpeg, no video stream.
    """
    if not path.exists():
        raise DecodeError("file not found")
    if not path.is_file():
        raise DecodeError("not a regular file")
    if path.stat().st_size == 0:
        raise DecodeError("file is empty")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise DecodeError(
            f"not a video file FFmpeg can read ({_ffmpeg_message(exc)})"
        ) from None
    # Cover art in audio files is a one-picture "video" stream: not a video.
    streams = [
        s
        for s in container.streams.video
        if not s.disposition & av.stream.Disposition.attached_pic
    ]
    if not streams:
        container.close()
        raise DecodeError("no video stream (audio-only or data file)")
    stream = streams[0]
    cc = stream.codec_context
    cc.thread_count = (
        1  # single-threaded per worker: parallelism comes from worker processes
    )
    return container, stream


def index_video(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> VideoIndex:
    """Demux every packet of ``stream`` (no decoding) and derive the frame count and timing.

    A read error part-way (a truncated or damaged file) ends the index at the last good packet.

    Args:
        container: the open container.
        stream: its video stream.

    Returns:
        The :class:`VideoIndex`.

    Raises:
        DecodeError: the stream holds no packet.
    """
    packets: list[av.Packet] = []
    try:
        for packet in container.demux(stream):
            if packet.size > 0:
                packets.append(packet)
    except av.error.FFmpegError as exc:
        log.debug("demux stopped after %d packets: %s", len(packets), exc)
    # A file cut short ends in a partial packet the demuxer flags corrupt: not a frame.
    while packets and packets[-1].is_corrupt:
        packets.pop()
    if not packets:
        raise DecodeError("video stream has no frames")
    # Packets flagged "discard" (edit-list pre-roll) are decoded as references but never shown.
    shown = [p for p in packets if not p.is_discard]
    pts = [p.pts for p in shown]
    frame_pts = sorted(pts) if None not in pts and len(set(pts)) == len(pts) else None
    time_base = stream.time_base or Fraction(0)
    rate = stream.guessed_rate or stream.average_rate
    n = len(shown)
    duration_s = 0.0
    if frame_pts is not None and time_base:
        last = max(shown, key=lambda p: p.pts)
        deltas = np.diff(frame_pts)
        last_duration = last.duration or (int(np.median(deltas)) if len(deltas) else 0)
        duration_s = float((frame_pts[-1] - frame_pts[0] + last_duration) * time_base)
    if duration_s <= 0 and rate:
        duration_s = n / float(rate)
    fps = n / duration_s if duration_s > 0 else float(rate or 0.0)
    return VideoIndex(
        packets=packets,
        frame_pts=frame_pts,
        num_frames=n,
        fps=fps,
        duration_s=duration_s,
        time_base=time_base,
        codec=stream.codec_context.name,
    )


def plan_groups(index: VideoIndex, targets: list[int]) -> list[tuple[int, set[int]]]:
    """Group target frames by the packet position their decoding must start at.

    Args:
        index: the video's index (``frame_pts`` must not be ``None``).
        targets: target frame indices (presentation order).

    Returns:
        ``[(start, {pts, ...}), ...]`` sorted by ``start``, the decode-order position of the
        keyframe that opens the GOP holding those target frames.
    """
    assert index.frame_pts is not None
    position = {p.pts: j for j, p in enumerate(index.packets) if not p.is_discard}
    keys = sorted({0} | {j for j, p in enumerate(index.packets) if p.is_keyframe})
    groups: dict[int, set[int]] = {}
    for t in sorted(set(targets)):
        pts = index.frame_pts[t]
        k = bisect.bisect_right(keys, position[pts]) - 1
        # An open-GOP leading picture (shown before its keyframe) references the previous GOP.
        keyframe_pts = index.packets[keys[k]].pts
        if k > 0 and keyframe_pts is not None and pts < keyframe_pts:
            k -= 1
        groups.setdefault(keys[k], set()).add(pts)
    return sorted(groups.items())


def frame_to_rgb(frame: av.VideoFrame, size: int) -> np.ndarray:
    """Resize a decoded frame's short side to ``size``, centre-crop it and rotate it upright.

    Args:
        frame: a decoded frame (any pixel format: yuv420p, yuv420p10le, rgba, ...; alpha is
            dropped).
        size: S, output side in pixels.

    Returns:
        uint8 ``(S, S, 3)`` RGB.
    """
    w, h = resized_shape(frame.width, frame.height, size)
    rgb = _REFORMATTER.reformat(
        frame,
        width=w,
        height=h,
        format="rgb24",
        interpolation="AREA",
        src_color_range=frame.color_range or None,
        threads=1,
    ).to_ndarray()
    y0, x0 = (h - size) // 2, (w - size) // 2
    crop = rgb[y0 : y0 + size, x0 : x0 + size]
    # The display matrix rotates counter-clockwise by `rotation` degrees; so does rot90.
    quarter_turns = round(frame.rotation / 90) % 4
    if quarter_turns:
        crop = np.rot90(crop, quarter_turns)
    return np.ascontiguousarray(crop)


def _ffmpeg_message(exc: av.error.FFmpegError) -> str:
    return (getattr(exc, "strerror", None) or str(exc)).rstrip(".")


def decode_packet(cc: av.CodecContext, packet: av.Packet | None) -> list[av.VideoFrame]:
    """Decode one packet, treating a damaged packet as one that yields no frame."""
    try:
        return cc.decode(packet)
    except av.error.EOFError:
        return []
    except av.error.FFmpegError as exc:
        log.debug("decoder rejected a packet: %s", exc)
        return []


def decode_planned(
    cc: av.CodecContext, index: VideoIndex, targets: list[int], size: int
) -> tuple[dict[int, np.ndarray], int, av.VideoFrame | None]:
    """Decode only the GOPs that hold a target; return converted frames keyed by timestamp.

    Args:
        cc: the stream's decoder.
        index: the video's index (``frame_pts`` must not be ``None``).
        targets: target frame indices (presentation order).
        size: S, output side in pixels.

    Returns:
        ``(frames, decoded, sample)``: uint8 ``(S, S, 3)`` frames keyed by the timestamp of
        each target that came out of the decoder, the number of frames decoded, and one
        decoded target frame (for its properties) or ``None``. ``frames`` is empty when the
        decoder returns timestamps out of order: the labels do not follow the display order
        (e.g. packed B-frames in an AVI), so matching by timestamp would pick wrong frames.
    """
    assert index.frame_pts is not None
    wanted = {index.frame_pts[t] for t in targets}
    out: dict[int, np.ndarray] = {}
    decoded, sample, last = 0, None, None
    packets, pos = index.packets, 0
    for start, group in plan_groups(index, targets):
        if start > pos:
            # Jump over GOPs without a target: forget the decoder's state, as after a seek.
            cc.flush_buffers()
            pos, last = start, None
        while not group <= out.keys() and pos <= len(packets):
            # Past the last packet, None drains the frames the decoder still holds.
            packet = packets[pos] if pos < len(packets) else None
            pos += 1
            if packet is not None:
                cc.skip_frame = "DEFAULT" if packet.pts in wanted else "NONREF"
            for frame in decode_packet(cc, packet):
                decoded += 1
                if frame.pts is not None:
                    if last is not None and frame.pts <= last:
                        return {}, decoded, None
                    last = frame.pts
                if frame.pts in wanted and frame.pts not in out:
                    out[frame.pts] = frame_to_rgb(frame, size)
                    sample = frame
    return out, decoded, sample


def decode_sequential(
    cc: av.CodecContext, packets: list[av.Packet], n: int, r: int, size: int
) -> tuple[list[np.ndarray], list[int], int, av.VideoFrame | None]:
    """Decode every packet in order; frames are numbered as the decoder returns them.

    ``n`` is the expected frame count; when the decoder returns another count, the targets are
    re-chosen for the true count and the stream is decoded once more.

    Args:
        cc: the stream's decoder.
        packets: every packet of the stream, in decode order.
        n: expected number of frames.
        r: R, frames to return.
        size: S, output side in pixels.

    Returns:
        ``(frames, indices, count, sample)``: ``r`` uint8 ``(S, S, 3)`` frames, their indices,
        the number of frames the decoder returned, and one decoded target frame.

    Raises:
        DecodeError: no packet decodes to a frame.
    """
    for _ in range(2):
        indices = segment_midpoints(n, r)
        wanted, got = set(indices), {}
        cc.flush_buffers()
        cc.skip_frame = "DEFAULT"
        count, sample = 0, None
        for packet in [*packets, None]:
            for frame in decode_packet(cc, packet):
                if count in wanted:
                    got[count] = frame_to_rgb(frame, size)
                    sample = frame
                count += 1
        if count == 0:
            raise DecodeError("no frame could be decoded")
        if count == n:
            return [got[i] for i in indices], indices, count, sample
        log.debug("decoder returned %d frames where the packets promised %d", count, n)
        n = count
    raise DecodeError("frame count is unstable between two decodes")  # pragma: no cover


def decode_pyav(path: Path, num_frames: int, size: int) -> DecodedVideo:
    """Decode ``num_frames`` frames at the segment midpoints of a video (CPU backend).

    Args:
        path: the video file.
        num_frames: R, frames to return.
        size: S, the output side in pixels.

    Returns:
        A :class:`~pipeline.decode.video.DecodedVideo` with ``frames`` uint8 ``(R, S, S, 3)`` and
        ``backend="ffmpeg"``.

    Raises:
        DecodeError: the video cannot be decoded; ``reason`` says why.
    """
    container, stream = open_video(path)
    try:
        index = index_video(container, stream)
        cc = stream.codec_context
        n = index.num_frames
        frames, sample = None, None
        if index.frame_pts is not None:
            indices = segment_midpoints(n, num_frames)
            by_pts, decoded, sample = decode_planned(cc, index, indices, size)
            if len(by_pts) == len(set(indices)):
                frames = [by_pts[index.frame_pts[i]] for i in indices]
            else:
                log.debug("%s: timestamps cannot place the targets; decoding all", path)
        if frames is None:
            frames, indices, n, sample = decode_sequential(
                cc, index.packets, n, num_frames, size
            )
            decoded = n
    finally:
        container.close()
    assert sample is not None
    rotation = round(sample.rotation / 90) % 4 * 90
    width, height = (
        (sample.height, sample.width)
        if rotation in (90, 270)
        else (sample.width, sample.height)
    )
    fps = (
        index.fps
        if n == index.num_frames
        else (n / index.duration_s if index.duration_s else index.fps)
    )
    return DecodedVideo(
        frames=np.stack(frames),
        indices=indices,
        fps=fps,
        num_frames=n,
        duration_s=index.duration_s,
        backend="ffmpeg",
        width=width,
        height=height,
        rotation=rotation,
        codec=index.codec,
        pix_fmt=sample.format.name,
        decoded_frames=decoded,
    )
