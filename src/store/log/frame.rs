//! The record log's on-disk format: the segment header and the frames.
//!
//! Segment file `{first_seq:020}.log`:
//! - header, 24 bytes: magic `SCHAKLOG`, format version (u32 LE), first
//!   sequence (u64 LE), CRC32C of the 20 bytes before it (u32 LE);
//! - frames, back to back: payload length (u32 LE), CRC32C (u32 LE) of the
//!   length, sequence and payload bytes, sequence (u64 LE), payload.
//!
//! Sequences are contiguous: a segment's frames carry `first_seq`,
//! `first_seq + 1`, ... and the next segment starts where this one ends.
//!
//! Must not: do I/O beyond the `LogFile` it is handed, or put payload bytes
//! in a problem description. Called by `super` (open, read, iterate, check).

use super::fs::LogFile;

pub(crate) const MAGIC: &[u8; 8] = b"SCHAKLOG";
/// The on-disk format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
pub(crate) const HEADER_LEN: u64 = 24;
pub(crate) const FRAME_HEADER_LEN: usize = 16;

/// The segment file name for a segment starting at `first_seq`.
pub(crate) fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.log")
}

/// The first sequence named by a segment file name, or `None` if the name is
/// not a segment's.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(crate) fn encode_header(first_seq: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Why a segment header is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderProblem {
    Short(usize),
    Magic,
    Checksum,
    Version(u32),
}

impl std::fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderProblem::Short(n) => write!(f, "segment header is {n} of {HEADER_LEN} bytes"),
            HeaderProblem::Magic => f.write_str("not a record log segment (bad magic)"),
            HeaderProblem::Checksum => f.write_str("segment header checksum mismatch"),
            HeaderProblem::Version(v) => write!(
                f,
                "segment format version {v} is not supported (this build reads {FORMAT_VERSION})"
            ),
        }
    }
}

/// Decodes a segment header: its first sequence.
pub(crate) fn decode_header(h: &[u8]) -> Result<u64, HeaderProblem> {
    if h.len() < HEADER_LEN as usize {
        return Err(HeaderProblem::Short(h.len()));
    }
    if &h[0..8] != MAGIC {
        return Err(HeaderProblem::Magic);
    }
    let crc = u32::from_le_bytes([h[20], h[21], h[22], h[23]]);
    if crc32c::crc32c(&h[0..20]) != crc {
        return Err(HeaderProblem::Checksum);
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if version != FORMAT_VERSION {
        return Err(HeaderProblem::Version(version));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&h[12..20]);
    Ok(u64::from_le_bytes(seq))
}

fn frame_crc(len: &[u8], seq: &[u8], payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(len);
    let crc = crc32c::crc32c_append(crc, seq);
    crc32c::crc32c_append(crc, payload)
}

/// Appends one encoded frame to `out`.
pub(crate) fn encode_frame(out: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    // The caller has checked the payload against `max_payload` (a u32).
    let len = (payload.len() as u32).to_le_bytes();
    let seq_bytes = seq.to_le_bytes();
    let crc = frame_crc(&len, &seq_bytes, payload);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&seq_bytes);
    out.extend_from_slice(payload);
}

/// Why the bytes at an offset are not the expected frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FrameProblem {
    /// The file ends inside the frame (a torn write, or the end of the file
    /// when `got` is 0).
    Short {
        got: usize,
        need: usize,
    },
    /// The length field is larger than any frame the log writes.
    TooLong(u32),
    Checksum,
    /// The checksum holds but the sequence is not the next one.
    Sequence {
        expected: u64,
        found: u64,
    },
}

impl std::fmt::Display for FrameProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameProblem::Short { got, need } => {
                write!(f, "frame truncated: {got} of {need} bytes")
            }
            FrameProblem::TooLong(n) => write!(f, "frame length {n} exceeds the maximum"),
            FrameProblem::Checksum => f.write_str("frame checksum mismatch"),
            FrameProblem::Sequence { expected, found } => {
                write!(f, "frame sequence {found}, expected {expected}")
            }
        }
    }
}

/// What reading a frame gave.
pub(crate) enum FrameRead {
    /// A valid frame; the next one starts at `next`.
    Frame { payload: Vec<u8>, next: u64 },
    /// Clean end of the file exactly at the offset.
    End,
    /// The bytes at the offset are not a valid frame.
    Bad(FrameProblem),
}

/// Reads and verifies the frame at `offset`, which must carry `expected`.
pub(crate) fn read_frame(
    file: &dyn LogFile,
    offset: u64,
    expected: u64,
    max_payload: u32,
) -> std::io::Result<FrameRead> {
    let mut head = [0u8; FRAME_HEADER_LEN];
    let got = file.read_at(&mut head, offset)?;
    if got == 0 {
        return Ok(FrameRead::End);
    }
    if got < FRAME_HEADER_LEN {
        return Ok(FrameRead::Bad(FrameProblem::Short {
            got,
            need: FRAME_HEADER_LEN,
        }));
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    if len > max_payload {
        return Ok(FrameRead::Bad(FrameProblem::TooLong(len)));
    }
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let mut payload = vec![0u8; len as usize];
    let got = file.read_at(&mut payload, offset + FRAME_HEADER_LEN as u64)?;
    if got < payload.len() {
        return Ok(FrameRead::Bad(FrameProblem::Short {
            got: FRAME_HEADER_LEN + got,
            need: FRAME_HEADER_LEN + payload.len(),
        }));
    }
    if frame_crc(&head[0..4], &head[8..16], &payload) != crc {
        return Ok(FrameRead::Bad(FrameProblem::Checksum));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&head[8..16]);
    let found = u64::from_le_bytes(seq);
    if found != expected {
        return Ok(FrameRead::Bad(FrameProblem::Sequence { expected, found }));
    }
    Ok(FrameRead::Frame {
        payload,
        next: offset + FRAME_HEADER_LEN as u64 + u64::from(len),
    })
}
