//! The byte patterns the host test and the guest agree on, generated and
//! checked a u64 at a time (every ring-0 instruction is emulated, so byte
//! loops over hundreds of KiB would be slow).

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

    /// Fills `buffer` (8-byte aligned, length a multiple of 8) with the pattern.
    pub fn fill(&self, buffer: &mut [u8]) {
        for (index, chunk) in buffer.chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&self.words[index % 32].to_le_bytes());
        }
    }

    /// The offset of the first byte of `buffer` that differs from the pattern.
    pub fn first_mismatch(&self, buffer: &[u8]) -> Option<usize> {
        for (index, chunk) in buffer.chunks_exact(8).enumerate() {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            if u64::from_le_bytes(word) != self.words[index % 32] {
                let base = index * 8;
                return (base..base + 8).find(|&offset| buffer[offset] != self.byte(offset));
            }
        }
        let tail = buffer.len() - buffer.len() % 8;
        (tail..buffer.len()).find(|&offset| buffer[offset] != self.byte(offset))
    }
}
