//! The byte patterns the host test and the guest agree on, generated and
//! checked a u64 at a time (every ring-0 instruction is emulated, so byte
//! loops over hundreds of KiB would be slow).

use crate::mem;

/// Bytes after which the pattern repeats.
const PERIOD: usize = 256;

/// A pattern `byte[i] = (i * multiplier + addend) & 0xff`, which repeats
/// every 256 bytes (32 words).
pub struct Pattern {
    words: [u64; 32],
}

/// The pattern the host writes at `guest.check`.
pub const HOST: Pattern = Pattern::new(7, 13);
/// The pattern the guest writes at `guest.write`.
pub const GUEST: Pattern = Pattern::new(5, 3);

impl Pattern {
    const fn new(multiplier: u64, addend: u64) -> Self {
        let mut words = [0u64; 32];
        let mut word = 0;
        while word < 32 {
            let mut byte = 0;
            let mut value = 0u64;
            while byte < 8 {
                let index = (word * 8 + byte) as u64;
                value |= ((index * multiplier + addend) & 0xff) << (byte * 8);
                byte += 1;
            }
            words[word] = value;
            word += 1;
        }
        Self { words }
    }

    /// The byte expected at `index`.
    pub fn byte(&self, index: usize) -> u8 {
        (self.words[(index / 8) % 32] >> ((index % 8) * 8)) as u8
    }

    /// Fills `buffer` (length a multiple of 8) with the pattern: the first
    /// period by hand, the rest by one overlapping forward word copy.
    pub fn fill(&self, buffer: &mut [u8]) {
        let head = buffer.len().min(PERIOD);
        for (index, chunk) in buffer[..head].chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&self.words[index].to_le_bytes());
        }
        if buffer.len() > PERIOD {
            let words = (buffer.len() - PERIOD) / 8;
            let base = buffer.as_mut_ptr();
            // SAFETY: both ranges lie inside `buffer`; the copy runs forward,
            // so each word is read after it was written, repeating the period.
            unsafe { mem::copy_words_forward(base.add(PERIOD), base, words) };
        }
    }

    /// The offset of the first byte of `buffer` (length a multiple of 8) that
    /// differs from the pattern: the first period is compared with the
    /// pattern, then the rest with itself one period earlier.
    pub fn first_mismatch(&self, buffer: &[u8]) -> Option<usize> {
        let head = buffer.len().min(PERIOD);
        let expected = self.words.as_ptr().cast::<u8>();
        // SAFETY: `head` bytes of both the buffer and the 256-byte table.
        let mut word = unsafe { mem::first_different_word(buffer.as_ptr(), expected, head / 8) };
        if word.is_none() && buffer.len() > PERIOD {
            let base = buffer.as_ptr();
            // SAFETY: both ranges lie inside `buffer`.
            word = unsafe {
                mem::first_different_word(base.add(PERIOD), base, (buffer.len() - PERIOD) / 8)
            }
            .map(|index| index + PERIOD / 8);
        }
        let start = word? * 8;
        (start..start + 8).find(|&offset| buffer[offset] != self.byte(offset))
    }
}
