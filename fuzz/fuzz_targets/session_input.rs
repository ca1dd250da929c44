//! The input of the session targets (`client_session`, `server_session`):
//! one flags byte, then frames, each a big-endian `u16` length and that many
//! bytes (the last one takes what is left).

/// The flags byte and the frames of `data`; `None` when it is empty.
pub fn parse(data: &[u8]) -> Option<(u8, Vec<Vec<u8>>)> {
    let (&flags, mut rest) = data.split_first()?;
    let mut frames = Vec::new();
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let body = &rest[2..];
        let (frame, after) = body.split_at(len.min(body.len()));
        frames.push(frame.to_vec());
        rest = after;
    }
    Some((flags, frames))
}
