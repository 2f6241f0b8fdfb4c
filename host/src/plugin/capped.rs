//! A guest string copied out of its linear memory during the lift, up to a limit: what a hook
//! returns is read before the guest's post-return frees it (wasmtime runs that inside the
//! call), and a 40 MB error costs the host its first KiB, not 40 MB.
//!
//! wasmtime lifts a `string` into a whole `String`, and its `WasmStr` is only valid until the
//! call returns; so this is a `Lift` of its own, written against the hidden, unstable items
//! wasmtime's derive macros use (`component::__internal`), as of wasmtime 48.

use wasmtime::ValRaw;
use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext, wasmtime_environ};
use wasmtime::component::{ComponentType, Lift};

/// A guest `string` of `len` bytes, copied out whole when it holds at most `LIMIT` bytes;
/// longer, its first `LIMIT` bytes (cut on a character boundary) when `PREFIX`, else nothing.
pub(super) struct Capped<const LIMIT: usize, const PREFIX: bool> {
    /// The start of the string, all of it when `len <= LIMIT`.
    pub(super) text: String,
    /// The string's whole length.
    pub(super) len: usize,
}

impl<const LIMIT: usize, const PREFIX: bool> Capped<LIMIT, PREFIX> {
    /// Whether all of it was copied out.
    pub(super) fn whole(&self) -> bool {
        self.text.len() == self.len
    }

    /// Copies out the string at `ptr`, `len` bytes long, as the type says.
    fn read(cx: &mut LiftContext<'_>, ptr: usize, len: usize) -> wasmtime::Result<Self> {
        if !matches!(cx.options().string_encoding, wasmtime_environ::component::StringEncoding::Utf8) {
            return Err(wasmtime::Error::msg("a plugin's strings must be UTF-8 (the canonical ABI's default)"));
        }
        let memory = cx.memory();
        let bytes = ptr
            .checked_add(len)
            .and_then(|end| memory.get(ptr..end))
            .ok_or_else(|| wasmtime::Error::msg("string pointer/length out of bounds of memory"))?;
        if len > LIMIT && !PREFIX {
            return Ok(Self { text: String::new(), len });
        }
        let head = &bytes[..len.min(LIMIT)];
        let text = match std::str::from_utf8(head) {
            Ok(t) => t,
            // Cut inside a character: keep the characters before it.
            Err(e) if head.len() < len && e.error_len().is_none() => {
                std::str::from_utf8(&head[..e.valid_up_to()]).map_err(wasmtime::Error::msg)?
            }
            Err(e) => return Err(wasmtime::Error::msg(format!("invalid utf-8 in a string: {e}"))),
        };
        Ok(Self { text: text.to_string(), len })
    }
}

// SAFETY: the same representation as wasmtime's own `String` and `WasmStr` (a pointer and a
// length, two flat values), and the same type check.
#[allow(unsafe_code)]
unsafe impl<const LIMIT: usize, const PREFIX: bool> ComponentType for Capped<LIMIT, PREFIX> {
    type Lower = [ValRaw; 2];

    const ABI: CanonicalAbiInfo = CanonicalAbiInfo::POINTER_PAIR;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <String as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: reads only the guest memory it is given, bounds-checked, as wasmtime's `WasmStr` does.
#[allow(unsafe_code)]
unsafe impl<const LIMIT: usize, const PREFIX: bool> Lift for Capped<LIMIT, PREFIX> {
    fn linear_lift_from_flat(
        cx: &mut LiftContext<'_>,
        _ty: InterfaceType,
        src: &Self::Lower,
    ) -> wasmtime::Result<Self> {
        let ptr = usize::try_from(src[0].get_u32())?;
        let len = usize::try_from(src[1].get_u32())?;
        Self::read(cx, ptr, len)
    }

    fn linear_lift_from_memory(cx: &mut LiftContext<'_>, _ty: InterfaceType, bytes: &[u8]) -> wasmtime::Result<Self> {
        let word = |i: usize| -> wasmtime::Result<usize> {
            let b: [u8; 4] = bytes
                .get(i..i + 4)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| wasmtime::Error::msg("string pointer pair out of bounds"))?;
            Ok(usize::try_from(u32::from_le_bytes(b))?)
        };
        let (ptr, len) = (word(0)?, word(4)?);
        Self::read(cx, ptr, len)
    }
}
