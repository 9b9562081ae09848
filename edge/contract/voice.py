"""Live speech from the township (喊话): the packets on `…/<station>/voice` and
`…/all/voice` (edge/contract/topics.py), QoS 0.

The officer's browser encodes the microphone to Opus (WebCodecs `AudioEncoder`, 48 kHz
mono, 20 ms frames); the console relays a few frames at a time (`VoicePacket.frames`,
each one raw Opus packet as RFC 6716 defines it, no container). JSON with the frames in
base64, like every other payload: the stations validate it with the same tooling, and at
24 kbit/s a 60 ms packet is ~300 bytes of JSON (≈ 40 kbit/s on the link), which a rural
4G or line link carries with room to spare.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

SessionId = Annotated[str, msgspec.Meta(
    min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$(?!\n)")]
# RFC 6716: an Opus packet is at most 1275 bytes (120 ms at the highest rate).
OpusPacket = Annotated[bytes, msgspec.Meta(min_length=1, max_length=1275)]
MAX_FRAMES = 25
# Every Opus stream decodes at this rate; the station resamples to its loudspeaker's.
OPUS_RATE = 48000


class VoicePacket(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A few consecutive Opus frames of one live session."""

    session: SessionId
    # Per session, from 0, one per packet: a gap is a packet lost on the way.
    seq: Annotated[int, msgspec.Meta(ge=0, le=2**31)]
    # When the first frame's first sample was captured (Unix ms, the officer's clock):
    # the stations report mouth → loudspeaker delay from it.
    at_ms: Annotated[int, msgspec.Meta(ge=0, le=2**53)]
    frames: Annotated[list[OpusPacket], msgspec.Meta(max_length=MAX_FRAMES)]
    # The officer let go: the session ends when what is buffered has played.
    end: bool = False
    by: Annotated[str, msgspec.Meta(max_length=64)] = ""


_decoder = msgspec.json.Decoder(VoicePacket)
_encoder = msgspec.json.Encoder()


def decode(data: bytes) -> VoicePacket:
    """A packet, or msgspec.ValidationError / DecodeError saying what is wrong."""
    return _decoder.decode(data)


def encode(packet: VoicePacket) -> bytes:
    return _encoder.encode(packet)
