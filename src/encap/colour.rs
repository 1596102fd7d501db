//! Recommended display colours as DICOM stores them: CIELab.
//!
//! DICOM gives a segment's or model's colour as CIELab (Recommended Display CIELab Value,
//! PS3.3 C.10.7.1.1), scaled to three unsigned 16-bit values; OBJ/MTL and people use sRGB
//! (`#rrggbb`). [`Cielab`] converts between the two through CIE XYZ with the D65 white
//! point and the sRGB transfer function (IEC 61966-2-1), the path DICOM's informative
//! colour annexes (PS3.17 "Color Space Conversions") describe.

use std::fmt;
use std::str::FromStr;

/// D65 reference white (CIE 1931 2°, Y = 1).
const WHITE: [f64; 3] = [0.950_47, 1.0, 1.088_83];

/// A colour in CIELab: `l` (L*) 0..100, `a` and `b` (a*, b*) about -128..127.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cielab {
    /// Lightness L*, 0 (black) to 100 (white).
    pub l: f64,
    /// a*, green (negative) to red (positive).
    pub a: f64,
    /// b*, blue (negative) to yellow (positive).
    pub b: f64,
}

/// A colour that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{value}` is not a colour: {why}; give \"#rrggbb\" (e.g. \"#e3dac9\") or [L, a, b] (L 0..100, a and b -128..127)"
)]
pub struct ColourError {
    /// What was given.
    pub value: String,
    /// What is wrong with it.
    pub why: &'static str,
}

fn srgb_to_linear(c: f64) -> f64 {
    if c <= 0.040_45 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

fn linear_to_srgb(c: f64) -> f64 {
    if c <= 0.003_130_8 {
        12.92 * c
    } else {
        1.055 * c.powf(1.0 / 2.4) - 0.055
    }
}

impl Cielab {
    /// The CIELab of an sRGB colour (8 bits per channel).
    pub fn from_srgb(rgb: [u8; 3]) -> Cielab {
        let [r, g, b] = rgb.map(|c| srgb_to_linear(f64::from(c) / 255.0));
        let xyz = [
            0.412_456_4 * r + 0.357_576_1 * g + 0.180_437_5 * b,
            0.212_672_9 * r + 0.715_152_2 * g + 0.072_175_0 * b,
            0.019_333_9 * r + 0.119_192_0 * g + 0.950_304_1 * b,
        ];
        let f = |t: f64| {
            const D: f64 = 6.0 / 29.0;
            if t > D * D * D {
                t.cbrt()
            } else {
                t / (3.0 * D * D) + 4.0 / 29.0
            }
        };
        let [fx, fy, fz] = [
            f(xyz[0] / WHITE[0]),
            f(xyz[1] / WHITE[1]),
            f(xyz[2] / WHITE[2]),
        ];
        Cielab {
            l: 116.0 * fy - 16.0,
            a: 500.0 * (fx - fy),
            b: 200.0 * (fy - fz),
        }
    }

    /// The nearest sRGB colour (out-of-gamut channels are clipped).
    pub fn to_srgb(&self) -> [u8; 3] {
        let finv = |t: f64| {
            const D: f64 = 6.0 / 29.0;
            if t > D {
                t * t * t
            } else {
                3.0 * D * D * (t - 4.0 / 29.0)
            }
        };
        let fy = (self.l + 16.0) / 116.0;
        let x = WHITE[0] * finv(fy + self.a / 500.0);
        let y = WHITE[1] * finv(fy);
        let z = WHITE[2] * finv(fy - self.b / 200.0);
        let lin = [
            3.240_454_2 * x - 1.537_138_5 * y - 0.498_531_4 * z,
            -0.969_266_0 * x + 1.876_010_8 * y + 0.041_556_0 * z,
            0.055_643_4 * x - 0.204_025_9 * y + 1.057_225_2 * z,
        ];
        lin.map(|c| {
            (linear_to_srgb(c.clamp(0.0, 1.0)) * 255.0)
                .round()
                .clamp(0.0, 255.0) as u8
        })
    }

    /// The three values of Recommended Display CIELab Value (0062,000D) and its kin
    /// (PS3.3 C.10.7.1.1): L* 0..100 scaled to 0..0xFFFF, a* and b* -128..127 scaled to
    /// 0..0xFFFF (0x8080 is 0). Values outside those ranges are clamped.
    pub fn to_dicom(&self) -> [u16; 3] {
        let scale = |v: f64, lo: f64, hi: f64| {
            ((v.clamp(lo, hi) - lo) / (hi - lo) * 65535.0).round() as u16
        };
        [
            scale(self.l, 0.0, 100.0),
            scale(self.a, -128.0, 127.0),
            scale(self.b, -128.0, 127.0),
        ]
    }

    /// The inverse of [`Cielab::to_dicom`].
    pub fn from_dicom(v: [u16; 3]) -> Cielab {
        let unscale = |x: u16, lo: f64, hi: f64| lo + f64::from(x) / 65535.0 * (hi - lo);
        Cielab {
            l: unscale(v[0], 0.0, 100.0),
            a: unscale(v[1], -128.0, 127.0),
            b: unscale(v[2], -128.0, 127.0),
        }
    }

    /// The colour as gamma-encoded sRGB fractions 0..1 (what MTL `Kd` holds in practice).
    pub fn to_srgb_unit(&self) -> [f32; 3] {
        self.to_srgb().map(|c| f32::from(c) / 255.0)
    }

    /// From L*, a*, b* numbers, checked against their ranges.
    pub fn from_lab(l: f64, a: f64, b: f64) -> Result<Cielab, ColourError> {
        let value = format!("[{l}, {a}, {b}]");
        if !(l.is_finite() && a.is_finite() && b.is_finite()) {
            return Err(ColourError {
                value,
                why: "not finite",
            });
        }
        if !(0.0..=100.0).contains(&l) {
            return Err(ColourError {
                value,
                why: "L must be 0..100",
            });
        }
        if !(-128.0..=127.0).contains(&a) || !(-128.0..=127.0).contains(&b) {
            return Err(ColourError {
                value,
                why: "a and b must be -128..127",
            });
        }
        Ok(Cielab { l, a, b })
    }
}

impl FromStr for Cielab {
    type Err = ColourError;

    /// `#rrggbb` (hex digits, either case).
    fn from_str(s: &str) -> Result<Cielab, ColourError> {
        let bad = |why| ColourError {
            value: s.to_string(),
            why,
        };
        let hex = s
            .trim()
            .strip_prefix('#')
            .ok_or_else(|| bad("no leading '#'"))?;
        if hex.len() != 6 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad("not six hex digits"));
        }
        let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| bad("bad hex"));
        Ok(Cielab::from_srgb([byte(0)?, byte(2)?, byte(4)?]))
    }
}

impl fmt::Display for Cielab {
    /// `#rrggbb`, the nearest sRGB colour.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [r, g, b] = self.to_srgb();
        write!(f, "#{r:02x}{g:02x}{b:02x}")
    }
}

impl<'de> serde::Deserialize<'de> for Cielab {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cielab, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Given {
            Hex(String),
            Lab([f64; 3]),
        }
        match Given::deserialize(d) {
            Ok(Given::Hex(s)) => s.parse().map_err(serde::de::Error::custom),
            Ok(Given::Lab([l, a, b])) => {
                Cielab::from_lab(l, a, b).map_err(serde::de::Error::custom)
            }
            Err(_) => Err(serde::de::Error::custom(
                "a colour is \"#rrggbb\" (e.g. \"#e3dac9\") or [L, a, b] (L 0..100, a and b -128..127)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(c: Cielab, l: f64, a: f64, b: f64) -> bool {
        (c.l - l).abs() < 0.5 && (c.a - a).abs() < 0.5 && (c.b - b).abs() < 0.5
    }

    #[test]
    fn known_srgb_lab_pairs() {
        // Reference values (D65, 2°) as published by Bruce Lindbloom's calculator.
        let pairs: [([u8; 3], [f64; 3]); 6] = [
            ([255, 255, 255], [100.0, 0.0, 0.0]),
            ([0, 0, 0], [0.0, 0.0, 0.0]),
            ([255, 0, 0], [53.24, 80.09, 67.20]),
            ([0, 255, 0], [87.73, -86.18, 83.18]),
            ([0, 0, 255], [32.30, 79.19, -107.86]),
            ([128, 128, 128], [53.59, 0.0, 0.0]),
        ];
        for (rgb, [l, a, b]) in pairs {
            let lab = Cielab::from_srgb(rgb);
            assert!(close(lab, l, a, b), "{rgb:?} -> {lab:?}, want {l} {a} {b}");
            assert_eq!(lab.to_srgb(), rgb, "{lab:?}");
        }
    }

    #[test]
    fn srgb_round_trips() {
        for rgb in [[227, 218, 201], [241, 194, 125], [1, 2, 3], [200, 30, 90]] {
            assert_eq!(Cielab::from_srgb(rgb).to_srgb(), rgb);
        }
    }

    #[test]
    fn dicom_scaling() {
        let white = Cielab {
            l: 100.0,
            a: 0.0,
            b: 0.0,
        };
        assert_eq!(white.to_dicom(), [65535, 32896, 32896]);
        let ends = Cielab {
            l: 0.0,
            a: -128.0,
            b: 127.0,
        };
        assert_eq!(ends.to_dicom(), [0, 0, 65535]);
        // Clamped, not wrapped.
        let out = Cielab {
            l: 120.0,
            a: -300.0,
            b: 300.0,
        };
        assert_eq!(out.to_dicom(), [65535, 0, 65535]);
        let red = Cielab::from_srgb([255, 0, 0]);
        let back = Cielab::from_dicom(red.to_dicom());
        assert!(close(back, red.l, red.a, red.b), "{back:?}");
    }

    #[test]
    fn parse_and_display() {
        let c: Cielab = "#E3dac9".parse().expect("hex");
        assert_eq!(c.to_string(), "#e3dac9");
        for bad in ["e3dac9", "#e3dac", "#e3dac9ff", "#gggggg", "", "#"] {
            let err = bad.parse::<Cielab>().expect_err(bad).to_string();
            assert!(
                err.contains("#rrggbb") && err.contains("[L, a, b]"),
                "{err}"
            );
        }
    }

    #[test]
    fn deserialize_hex_or_lab() {
        #[derive(serde::Deserialize)]
        struct T {
            c: Cielab,
        }
        let t: T = toml::from_str("c = \"#ff0000\"").expect("hex");
        assert_eq!(t.c.to_srgb(), [255, 0, 0]);
        let t: T = toml::from_str("c = [50.0, 10, -20]").expect("lab");
        assert_eq!(
            t.c,
            Cielab {
                l: 50.0,
                a: 10.0,
                b: -20.0
            }
        );
        for bad in ["c = \"red\"", "c = [150, 0, 0]", "c = [50, 0]", "c = 3"] {
            let err = toml::from_str::<T>(bad).err().expect(bad).to_string();
            assert!(err.contains("#rrggbb"), "{bad}: {err}");
        }
    }
}
