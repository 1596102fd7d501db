//! Settings that take one of a few names (`gaps = "interpolate"`, `--tilt resample`): the
//! enums derive [`clap::ValueEnum`], and [`choice!`](crate::choice!) gives them `FromStr` and
//! `TryFrom<String>` (for `#[serde(try_from = "String")]`) with one message for both the
//! command line and the configuration file, naming the value and every accepted name.

/// Parses one of `T`'s names; the error lists them all.
pub fn parse<T: clap::ValueEnum>(s: &str) -> Result<T, String> {
    T::from_str(s, false).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|p| p.get_name().to_string())
            .collect();
        format!("`{s}` is not one of: {}", names.join(", "))
    })
}

/// Implements `FromStr` and `TryFrom<String>` through [`parse`] for `ValueEnum` types.
#[macro_export]
macro_rules! choice {
    ($($t:ty),+ $(,)?) => {$(
        impl ::std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $crate::choice::parse(s)
            }
        }
        impl ::std::convert::TryFrom<String> for $t {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                $crate::choice::parse(&s)
            }
        }
    )+};
}
