//! Data types and the sealed [`Element`] trait that ties Rust types to them.

use std::fmt;

/// The element types oxccl reduces and moves. Discriminants are NCCL's `ncclDataType_t`
/// values, so the C ABI can pass them through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DataType {
    /// `i8`
    I8 = 0,
    /// `u8`
    U8 = 1,
    /// `i32`
    I32 = 2,
    /// `u32`
    U32 = 3,
    /// `i64`
    I64 = 4,
    /// `u64`
    U64 = 5,
    /// IEEE half precision ([`half::f16`])
    F16 = 6,
    /// `f32`
    F32 = 7,
    /// `f64`
    F64 = 8,
    /// bfloat16 ([`half::bf16`])
    Bf16 = 9,
}

impl DataType {
    /// Every data type, in NCCL order.
    pub const ALL: [DataType; 10] = [
        DataType::I8,
        DataType::U8,
        DataType::I32,
        DataType::U32,
        DataType::I64,
        DataType::U64,
        DataType::F16,
        DataType::F32,
        DataType::F64,
        DataType::Bf16,
    ];

    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DataType::I8 | DataType::U8 => 1,
            DataType::F16 | DataType::Bf16 => 2,
            DataType::I32 | DataType::U32 | DataType::F32 => 4,
            DataType::I64 | DataType::U64 | DataType::F64 => 8,
        }
    }

    /// The name used on command lines and in benchmark output (nccl-tests' spelling).
    pub const fn name(self) -> &'static str {
        match self {
            DataType::I8 => "int8",
            DataType::U8 => "uint8",
            DataType::I32 => "int32",
            DataType::U32 => "uint32",
            DataType::I64 => "int64",
            DataType::U64 => "uint64",
            DataType::F16 => "half",
            DataType::F32 => "float",
            DataType::F64 => "double",
            DataType::Bf16 => "bfloat16",
        }
    }

    /// Whether the type is a floating-point type.
    pub const fn is_float(self) -> bool {
        matches!(self, DataType::F16 | DataType::Bf16 | DataType::F32 | DataType::F64)
    }

    /// Parses a name: nccl-tests' (`float`, `half`, `bfloat16`, `int32`...) or Rust's (`f32`,
    /// `f16`, `bf16`, `i32`...).
    pub fn parse(s: &str) -> Option<DataType> {
        Some(match s.to_ascii_lowercase().as_str() {
            "int8" | "i8" | "char" => DataType::I8,
            "uint8" | "u8" => DataType::U8,
            "int32" | "i32" | "int" => DataType::I32,
            "uint32" | "u32" => DataType::U32,
            "int64" | "i64" => DataType::I64,
            "uint64" | "u64" => DataType::U64,
            "half" | "f16" | "float16" => DataType::F16,
            "float" | "f32" | "float32" => DataType::F32,
            "double" | "f64" | "float64" => DataType::F64,
            "bfloat16" | "bf16" => DataType::Bf16,
            _ => return None,
        })
    }

    /// The NCCL `ncclDataType_t` value.
    pub fn from_nccl(v: u8) -> Option<DataType> {
        DataType::ALL.get(v as usize).copied()
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A Rust type that oxccl can reduce and move: `i8 u8 i32 u32 i64 u64 f32 f64`,
/// [`half::f16`] and [`half::bf16`]. Sealed: the reduction kernels exist for these alone.
///
/// # Safety (for the crate, not implementors)
/// Every implementor is plain old data: any bit pattern is a valid value and it has no
/// padding, so its slices may be viewed as bytes.
pub trait Element: sealed::Sealed + Copy + Send + Sync + PartialEq + fmt::Debug + 'static {
    /// The matching [`DataType`].
    const DTYPE: DataType;
}

macro_rules! element {
    ($($t:ty => $d:ident),*) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: DataType = DataType::$d;
        }
    )*};
}
element!(i8 => I8, u8 => U8, i32 => I32, u32 => U32, i64 => I64, u64 => U64,
         half::f16 => F16, f32 => F32, f64 => F64, half::bf16 => Bf16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_names_and_nccl_numbers() {
        for (i, d) in DataType::ALL.iter().enumerate() {
            assert_eq!(*d as usize, i);
            assert_eq!(DataType::from_nccl(i as u8), Some(*d));
            assert_eq!(DataType::parse(d.name()), Some(*d));
        }
        assert_eq!(DataType::from_nccl(10), None);
        assert_eq!(<half::bf16 as Element>::DTYPE.size(), 2);
        assert_eq!(<f64 as Element>::DTYPE.size(), std::mem::size_of::<f64>());
        assert_eq!(DataType::parse("bf16"), Some(DataType::Bf16));
        assert_eq!(DataType::parse("complex"), None);
    }
}
