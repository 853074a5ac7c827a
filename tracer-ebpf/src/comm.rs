//! Command names as two words. A `[u8; 16]` has alignment 1, so LLVM copies one byte by byte in
//! BPF (32 instructions, and more where it packs it into an unaligned stack slot), several
//! times per transition. Every struct that holds a command name keeps it 8-aligned
//! (`tracer_common` asserts the offsets), so it is read and written here as two `u64`s.

use aya_ebpf::helpers::generated;

#[derive(Clone, Copy)]
pub struct Comm([u64; 2]);

impl Comm {
    pub const NONE: Self = Self([0; 2]);

    /// A command-name field of a struct (8-aligned, see the module docs).
    #[inline(always)]
    pub fn read(f: &[u8; 16]) -> Self {
        let p = f.as_ptr() as *const u64;
        // SAFETY: 16 bytes at an 8-aligned address.
        unsafe { Self([p.read(), p.add(1).read()]) }
    }

    #[inline(always)]
    pub fn write(self, f: &mut [u8; 16]) {
        let p = f.as_mut_ptr() as *mut u64;
        // SAFETY: 16 bytes at an 8-aligned address.
        unsafe {
            p.write(self.0[0]);
            p.add(1).write(self.0[1]);
        }
    }

    /// The current task's command name (empty when the helper fails).
    #[inline(always)]
    pub fn current() -> Self {
        // Uninitialized: zeroing it first was a call to a byte-wise `memset` subprogram (4% of
        // the transition program's samples with userspace attribution). The helper writes all
        // 16 bytes, NUL-padded, and zeroes them when it fails; the verifier accepts an
        // uninitialized buffer for it.
        let mut words = core::mem::MaybeUninit::<[u64; 2]>::uninit();
        // SAFETY: the helper writes exactly 16 bytes into the buffer, also on failure.
        let ret = unsafe { generated::bpf_get_current_comm(words.as_mut_ptr().cast(), 16) };
        if ret == 0 {
            Self(unsafe { words.assume_init() })
        } else {
            Self::NONE
        }
    }

    /// Whether the name is empty (its first byte is NUL; BPF is little-endian here).
    #[inline(always)]
    pub fn is_empty(self) -> bool {
        self.0[0] & 0xff == 0
    }
}
