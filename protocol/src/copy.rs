//! Copying frame-sized byte slices without falling into a slow `memcpy`.
//!
//! On AMD Zen processors with fast short `rep movsb` (FSRM), glibc's
//! `memcpy` copies more than 2112 bytes (its default threshold) with
//! `rep movsb`, and `rep movsb` there runs about fifteen times slower when
//! the destination's offset in its page is 1 to 15 bytes past the source's
//! (glibc bug 30994; measured with Debian 12's glibc 2.36 on this project's
//! benchmark machine, an AMD EPYC: 64 KiB at 3.5 GB/s in that case, 50–57
//! GB/s otherwise). Frames hit that case: two large buffers from one
//! allocator often start at the same offset in a page, and a header of a few
//! bytes pushes the copied part of the destination just past the source's.
//! A streaming server spent 36 % of its CPU in such copies while sealing
//! and encoding.
//!
//! [`extend_from_slice`] copies in blocks of [`BLOCK`] bytes instead. glibc
//! copies a block that small with vector moves, whatever the alignment (53
//! GB/s in the slow case above).

/// The block size: below glibc's default `rep movsb` threshold (2112
/// bytes), and large enough that a call per block costs nothing measurable.
pub const BLOCK: usize = 512;

/// Appends `bytes` to `out`, like `Vec::extend_from_slice`, in blocks of
/// [`BLOCK`] bytes (see the [module](self) documentation).
pub fn extend_from_slice(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len());
    let mut blocks = bytes.chunks_exact(BLOCK);
    // One `extend_from_slice` per block: its capacity check keeps the
    // compiler from fusing the blocks back into one large `memcpy` (which a
    // loop of `copy_from_slice` over zipped chunks becomes).
    for block in &mut blocks {
        out.extend_from_slice(block);
    }
    out.extend_from_slice(blocks.remainder());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_every_byte_in_order_for_every_length_around_the_block() {
        let source: Vec<u8> = (0..5 * BLOCK + 7).map(|i| (i * 31 % 251) as u8).collect();
        for len in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK, source.len()] {
            // Behind a header, as in a frame.
            let mut out = b"head".to_vec();
            extend_from_slice(&mut out, &source[..len]);
            assert_eq!(&out[..4], b"head");
            assert_eq!(&out[4..], &source[..len], "length {len}");
        }
    }
}
