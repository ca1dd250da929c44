//! Deterministic pseudo-random content for transfer tests, addressable by
//! offset so any chunk can be generated or checked on its own.

/// splitmix64's step between states.
pub const SPLITMIX64_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// splitmix64's output for the state `z`.
pub const fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a, 64 bits: a small stable hash for comparing content.
pub fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A byte stream whose every 8-byte word is `splitmix64(seed + index)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pattern {
    seed: u64,
}

impl Pattern {
    /// The stream for `seed`.
    pub const fn new(seed: u64) -> Pattern {
        Pattern { seed }
    }

    fn word(&self, index: u64) -> [u8; 8] {
        splitmix64(self.seed.wrapping_add(index.wrapping_mul(SPLITMIX64_GAMMA))).to_le_bytes()
    }

    /// Fills `out` with the stream's bytes from `offset` on.
    pub fn fill_at(&self, offset: u64, out: &mut [u8]) {
        let mut pos = offset;
        let mut done = 0;
        // Unaligned head, then whole words, then the tail.
        while done < out.len() {
            let word = self.word(pos / 8);
            let start = (pos % 8) as usize;
            if start == 0 && out.len() - done >= 8 {
                let words = (out.len() - done) / 8;
                for (i, slot) in out[done..done + words * 8].chunks_exact_mut(8).enumerate() {
                    slot.copy_from_slice(&self.word(pos / 8 + i as u64));
                }
                done += words * 8;
                pos += words as u64 * 8;
                continue;
            }
            let n = (8 - start).min(out.len() - done);
            out[done..done + n].copy_from_slice(&word[start..start + n]);
            done += n;
            pos += n as u64;
        }
    }

    /// `len` bytes of the stream from `offset`.
    pub fn bytes_at(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        self.fill_at(offset, &mut out);
        out
    }

    /// The position (in the stream) of the first byte of `chunk`, read at
    /// `offset`, that differs from the stream; `None` when it all matches.
    pub fn first_mismatch(&self, offset: u64, chunk: &[u8]) -> Option<u64> {
        let expected = self.bytes_at(offset, chunk.len());
        if expected == chunk {
            return None;
        }
        let at = expected
            .iter()
            .zip(chunk)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        Some(offset + at as u64)
    }

    /// Writes `len` bytes of the stream to a new file at `path`.
    pub fn write_file(&self, path: &std::path::Path, len: u64) -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
        let mut block = vec![0; 1 << 20];
        let mut offset = 0;
        while offset < len {
            let n = block.len().min((len - offset) as usize);
            self.fill_at(offset, &mut block[..n]);
            file.write_all(&block[..n])?;
            offset += n as u64;
        }
        file.into_inner()
            .map_err(|error| error.into_error())?
            .sync_all()
    }

    /// Checks that the file at `path` is exactly `len` bytes of the stream;
    /// `Err` says where it first differs.
    pub fn check_file(&self, path: &std::path::Path, len: u64) -> Result<(), String> {
        use std::io::Read;
        let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let size = file.metadata().map_err(|e| e.to_string())?.len();
        if size != len {
            return Err(format!(
                "{} has {size} bytes, expected {len}",
                path.display()
            ));
        }
        let mut block = vec![0; 1 << 20];
        let mut offset = 0;
        loop {
            let n = file.read(&mut block).map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(());
            }
            if let Some(at) = self.first_mismatch(offset, &block[..n]) {
                return Err(format!("{} differs at byte {at}", path.display()));
            }
            offset += n as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    #[test]
    fn chunks_at_any_offset_agree_with_the_whole() {
        let pattern = Pattern::new(7);
        let whole = pattern.bytes_at(0, 1000);
        for (offset, len) in [(0, 1), (3, 20), (8, 16), (13, 500), (999, 1), (1, 7)] {
            assert_eq!(
                pattern.bytes_at(offset as u64, len),
                whole[offset..offset + len]
            );
        }
        assert_eq!(pattern.first_mismatch(5, &whole[5..50]), None);
        let mut bad = whole[5..50].to_vec();
        bad[10] ^= 1;
        assert_eq!(pattern.first_mismatch(5, &bad), Some(15));
        assert_ne!(Pattern::new(8).bytes_at(0, 64), whole[..64]);
    }
}
