//! Seeded Gaussian noise and the `.npy` files the reference comparison reads.
//!
//! The generator is our own (SplitMix64, Steele et al., "Fast splittable pseudorandom number
//! generators", OOPSLA 2014; normals by the ziggurat method, Marsaglia and Tsang, "The Ziggurat
//! Method for Generating Random Variables", J. Stat. Softw. 2000, 128 layers, with the layer
//! index and the value taken from separate bits as Doornik 2005 recommends) rather than
//! `rand`'s `StdRng`, whose stream may change between `rand` versions: a seed must give the
//! same views on every build. The ziggurat because a run draws 49 k normals per step and the
//! polar method's logarithm per pair alone took most of the 1 ms per-step budget. It is not
//! torch's generator, so a seed does not reproduce a Wonder3D run image for image; the
//! pipeline records the noise it used instead ([`write_npy`]).

use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

/// A seeded stream of standard normal f32 values.
#[derive(Debug, Clone)]
pub struct GaussianRng {
    state: u64,
}

/// Right edge of the base strip (Marsaglia and Tsang's constants for 128 layers).
const R: f64 = 3.442_619_855_899;
/// Area of each layer.
const V: f64 = 9.912_563_035_262_17e-3;
const M1: f64 = 2_147_483_648.0;

struct Tables {
    k: [u32; 128],
    w: [f64; 128],
    f: [f64; 128],
}

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        let mut t = Tables {
            k: [0; 128],
            w: [0.0; 128],
            f: [0.0; 128],
        };
        let mut dn = R;
        let mut tn = dn;
        let q = V / (-0.5 * dn * dn).exp();
        t.k[0] = ((dn / q) * M1) as u32;
        t.k[1] = 0;
        t.w[0] = q / M1;
        t.w[127] = dn / M1;
        t.f[0] = 1.0;
        t.f[127] = (-0.5 * dn * dn).exp();
        for i in (1..=126).rev() {
            dn = (-2.0 * (V / dn + (-0.5 * dn * dn).exp()).ln()).sqrt();
            t.k[i + 1] = ((dn / tn) * M1) as u32;
            tn = dn;
            t.f[i] = (-0.5 * dn * dn).exp();
            t.w[i] = dn / M1;
        }
        t
    })
}

impl GaussianRng {
    /// A stream for `seed`; the same seed gives the same stream on every platform.
    pub fn new(seed: u64) -> Self {
        GaussianRng { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1] with 53 random bits.
    fn next_unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// One standard normal value.
    pub fn next_normal(&mut self) -> f32 {
        let t = tables();
        loop {
            let u = self.next_u64();
            let i = (u & 127) as usize;
            let hz = (u >> 32) as u32 as i32;
            let x = f64::from(hz) * t.w[i];
            if hz.unsigned_abs() < t.k[i] {
                return x as f32;
            }
            if i == 0 {
                // the tail beyond R (Marsaglia 1964)
                loop {
                    let x = -self.next_unit().ln() / R;
                    let y = -self.next_unit().ln();
                    if y + y >= x * x {
                        return (if hz > 0 { R + x } else { -R - x }) as f32;
                    }
                }
            }
            if t.f[i] + self.next_unit() * (t.f[i - 1] - t.f[i]) < (-0.5 * x * x).exp() {
                return x as f32;
            }
        }
    }

    /// Fills `out` with standard normal values.
    pub fn fill(&mut self, out: &mut [f32]) {
        for x in out {
            *x = self.next_normal();
        }
    }
}

/// Writes a little-endian f32 array as NumPy `.npy` (format 1.0), C order.
pub fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> std::io::Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // magic (6) + version (2) + header length (2) + header + '\n' is a multiple of 64
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for x in data {
        out.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::File::create(path)?.write_all(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_roughly_standard() {
        let mut a = GaussianRng::new(42);
        let mut b = GaussianRng::new(42);
        let mut xs = vec![0f32; 100_000];
        let mut ys = vec![0f32; 100_000];
        a.fill(&mut xs);
        b.fill(&mut ys);
        assert_eq!(xs, ys);
        let mean = xs.iter().map(|&x| f64::from(x)).sum::<f64>() / xs.len() as f64;
        let var = xs
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / xs.len() as f64;
        assert!(mean.abs() < 0.02, "{mean}");
        assert!((var - 1.0).abs() < 0.02, "{var}");
        // the tails: P(|x| > 2) = 4.55 %, P(|x| > 3) = 0.27 %, P(x > 1) = 15.87 %
        let share =
            |f: &dyn Fn(f32) -> bool| xs.iter().filter(|&&x| f(x)).count() as f64 / xs.len() as f64;
        assert!((share(&|x| x.abs() > 2.0) - 0.0455).abs() < 0.003);
        assert!((share(&|x| x.abs() > 3.0) - 0.0027).abs() < 0.0007);
        assert!((share(&|x| x > 1.0) - 0.1587).abs() < 0.005);
        assert!((share(&|x| x < -1.0) - 0.1587).abs() < 0.005);
        let mut c = GaussianRng::new(43);
        assert_ne!(c.next_normal(), xs[0]);
    }

    #[test]
    fn npy_header_is_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        write_npy(&p, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        assert_eq!(bytes.len(), 10 + hlen + 24);
        assert!(String::from_utf8_lossy(&bytes[10..10 + hlen]).contains("(2, 3)"));
    }
}
