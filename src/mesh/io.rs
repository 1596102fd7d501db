//! Mesh file formats: STL (binary and ASCII), PLY (binary little endian)
//! and Wavefront OBJ writers, and an STL reader.
//!
//! Method: the formats as published — STL from 3D Systems' "StereoLithography
//! Interface Specification" (1989/1988): 80-byte header, u32 count, 50-byte
//! facets; PLY from G. Turk's "The PLY Polygon File Format" (1994); OBJ from
//! the Wavefront Advanced Visualizer appendix (1-based `v`/`f` records).
//!
//! Why: these are the formats slicers and viewers accept. Units are not
//! stored by STL/PLY/OBJ: values are written as the mesh holds them,
//! millimetres in patient coordinates, which is what 3-D printing software
//! assumes. STL has no shared vertices, so [`read_stl`] welds bit-identical
//! positions back into an indexed mesh (what [`write_stl_binary`] and
//! [`write_stl_ascii`] produce round-trips exactly).

use std::collections::HashMap;
use std::fmt::Write as _;

use super::metrics::{cross, norm, sub};
use super::{Mesh, MeshError};

/// Unit normal of a triangle (zero for a degenerate one).
fn facet_normal(m: &Mesh, t: [u32; 3]) -> [f32; 3] {
    let p = |i: u32| {
        let v = m.vertices[i as usize];
        [f64::from(v[0]), f64::from(v[1]), f64::from(v[2])]
    };
    let n = cross(sub(p(t[1]), p(t[0])), sub(p(t[2]), p(t[0])));
    let l = norm(n);
    if l > 0.0 && l.is_finite() {
        [(n[0] / l) as f32, (n[1] / l) as f32, (n[2] / l) as f32]
    } else {
        [0.0; 3]
    }
}

/// Binary STL. `header` is truncated or zero-padded to 80 bytes; a header
/// starting with "solid" is altered to "SOLID" so readers do not mistake the
/// file for ASCII. Triangles with out-of-range indices are skipped.
pub fn write_stl_binary(mesh: &Mesh, header: &str) -> Vec<u8> {
    let tris: Vec<[u32; 3]> = mesh.valid_triangles().collect();
    let mut out = Vec::with_capacity(84 + 50 * tris.len());
    let mut h = [0u8; 80];
    let hb = header.as_bytes();
    let n = hb.len().min(80);
    h[..n].copy_from_slice(&hb[..n]);
    if h.starts_with(b"solid") {
        h[..5].copy_from_slice(b"SOLID");
    }
    out.extend_from_slice(&h);
    out.extend_from_slice(&(tris.len() as u32).to_le_bytes());
    for t in tris {
        let n = facet_normal(mesh, t);
        for c in n {
            out.extend_from_slice(&c.to_le_bytes());
        }
        for i in t {
            for c in mesh.vertices[i as usize] {
                out.extend_from_slice(&c.to_le_bytes());
            }
        }
        out.extend_from_slice(&0u16.to_le_bytes());
    }
    out
}

/// ASCII STL with solid name `name` (whitespace replaced by `_`). Numbers
/// are written in Rust's shortest round-trip form, so reading gives back the
/// same f32 values.
pub fn write_stl_ascii(mesh: &Mesh, name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect();
    let mut s = String::new();
    let _ = writeln!(s, "solid {name}");
    for t in mesh.valid_triangles() {
        let n = facet_normal(mesh, t);
        let _ = writeln!(s, "  facet normal {:e} {:e} {:e}", n[0], n[1], n[2]);
        s.push_str("    outer loop\n");
        for i in t {
            let v = mesh.vertices[i as usize];
            let _ = writeln!(s, "      vertex {} {} {}", v[0], v[1], v[2]);
        }
        s.push_str("    endloop\n  endfacet\n");
    }
    let _ = writeln!(s, "endsolid {name}");
    s
}

/// Binary little-endian PLY with `float x, y, z` vertices and
/// `list uchar int vertex_indices` faces. Triangles with out-of-range
/// indices are skipped.
pub fn write_ply(mesh: &Mesh) -> Vec<u8> {
    let tris: Vec<[u32; 3]> = mesh.valid_triangles().collect();
    let header = format!(
        "ply\nformat binary_little_endian 1.0\ncomment m3dnode, units mm\n\
         element vertex {}\nproperty float x\nproperty float y\nproperty float z\n\
         element face {}\nproperty list uchar int vertex_indices\nend_header\n",
        mesh.vertices.len(),
        tris.len()
    );
    let mut out = Vec::with_capacity(header.len() + 12 * mesh.vertices.len() + 13 * tris.len());
    out.extend_from_slice(header.as_bytes());
    for v in &mesh.vertices {
        for c in v {
            out.extend_from_slice(&c.to_le_bytes());
        }
    }
    for t in tris {
        out.push(3);
        for i in t {
            out.extend_from_slice(&(i as i32).to_le_bytes());
        }
    }
    out
}

/// Wavefront OBJ text: `v x y z` lines then 1-based `f a b c` lines.
/// Triangles with out-of-range indices are skipped.
pub fn write_obj(mesh: &Mesh) -> String {
    let mut s = String::with_capacity(32 * mesh.vertices.len() + 24 * mesh.triangle_count());
    s.push_str("# m3dnode OBJ, units mm\n");
    let _ = writeln!(
        s,
        "# vertices {} triangles {}",
        mesh.vertices.len(),
        mesh.valid_triangles().count()
    );
    for v in &mesh.vertices {
        let _ = writeln!(s, "v {} {} {}", v[0], v[1], v[2]);
    }
    for t in mesh.valid_triangles() {
        let _ = writeln!(s, "f {} {} {}", t[0] + 1, t[1] + 1, t[2] + 1);
    }
    s
}

/// Collects facet corners into an indexed mesh, merging bit-identical
/// positions (`-0.0` and `0.0` are merged).
struct Welder {
    map: HashMap<[u32; 3], u32>,
    mesh: Mesh,
}

impl Welder {
    fn new(cap: usize) -> Self {
        Welder {
            map: HashMap::with_capacity(cap),
            mesh: Mesh {
                vertices: Vec::with_capacity(cap),
                indices: Vec::with_capacity(3 * cap),
            },
        }
    }

    fn push(&mut self, v: [f32; 3]) -> Result<(), MeshError> {
        if v.iter().any(|c| !c.is_finite()) {
            return Err(MeshError::InvalidStl("non-finite vertex coordinate".into()));
        }
        let v = v.map(|c| if c == 0.0 { 0.0 } else { c });
        let key = v.map(f32::to_bits);
        let next = self.mesh.vertices.len();
        if next > u32::MAX as usize {
            return Err(MeshError::TooLarge);
        }
        let id = *self.map.entry(key).or_insert_with(|| {
            self.mesh.vertices.push(v);
            next as u32
        });
        self.mesh.indices.push(id);
        Ok(())
    }
}

/// Reads a binary or ASCII STL into an indexed mesh, welding identical
/// positions (coordinates are taken as mm). A file whose size is exactly
/// `84 + 50 * count` is read as binary; otherwise it must be a complete
/// ASCII STL (`solid` ... `endsolid`).
///
/// # Errors
/// [`MeshError::InvalidStl`] for truncated, malformed or non-STL input,
/// or non-finite coordinates.
pub fn read_stl(bytes: &[u8]) -> Result<Mesh, MeshError> {
    if bytes.len() >= 84 {
        let count = u32::from_le_bytes([bytes[80], bytes[81], bytes[82], bytes[83]]) as u64;
        if 84 + 50 * count == bytes.len() as u64 {
            return read_binary(&bytes[84..], count as usize);
        }
    }
    let trimmed = bytes.trim_ascii_start();
    if trimmed.len() >= 5 && trimmed[..5].eq_ignore_ascii_case(b"solid") {
        return read_ascii(bytes);
    }
    if bytes.len() < 84 {
        return Err(MeshError::InvalidStl(format!(
            "{} bytes is shorter than a binary STL header",
            bytes.len()
        )));
    }
    let count = u32::from_le_bytes([bytes[80], bytes[81], bytes[82], bytes[83]]) as u64;
    Err(MeshError::InvalidStl(format!(
        "binary STL with {count} facets needs {} bytes, file has {}",
        84 + 50 * count,
        bytes.len()
    )))
}

fn read_binary(body: &[u8], count: usize) -> Result<Mesh, MeshError> {
    let mut w = Welder::new(count / 2 + 1);
    for facet in body.chunks_exact(50) {
        for k in 0..3 {
            let base = 12 + 12 * k;
            let f = |o: usize| {
                let b = &facet[base + o..base + o + 4];
                f32::from_le_bytes([b[0], b[1], b[2], b[3]])
            };
            w.push([f(0), f(4), f(8)])?;
        }
    }
    Ok(w.mesh)
}

fn read_ascii(bytes: &[u8]) -> Result<Mesh, MeshError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| MeshError::InvalidStl("ASCII STL is not valid UTF-8".into()))?;
    type Tokens<'a> = std::iter::Peekable<std::str::SplitAsciiWhitespace<'a>>;
    fn bad(what: &str) -> MeshError {
        MeshError::InvalidStl(format!("ASCII STL: {what}"))
    }
    fn expect_word(tokens: &mut Tokens<'_>, word: &str) -> Result<(), MeshError> {
        match tokens.next() {
            Some(t) if t.eq_ignore_ascii_case(word) => Ok(()),
            Some(t) => Err(bad(&format!("expected '{word}', found '{t}'"))),
            None => Err(bad(&format!("truncated, expected '{word}'"))),
        }
    }
    fn number(tokens: &mut Tokens<'_>) -> Result<f32, MeshError> {
        let t = tokens.next().ok_or_else(|| bad("truncated number"))?;
        t.parse::<f32>()
            .map_err(|_| bad(&format!("bad number '{t}'")))
    }
    let mut tokens: Tokens<'_> = text.split_ascii_whitespace().peekable();
    expect_word(&mut tokens, "solid")?;
    // Optional name: everything up to the first "facet" or "endsolid".
    while let Some(t) = tokens.peek() {
        if t.eq_ignore_ascii_case("facet") || t.eq_ignore_ascii_case("endsolid") {
            break;
        }
        tokens.next();
    }
    let mut w = Welder::new(1024);
    loop {
        match tokens.next() {
            Some(t) if t.eq_ignore_ascii_case("endsolid") => break,
            Some(t) if t.eq_ignore_ascii_case("facet") => {
                expect_word(&mut tokens, "normal")?;
                for _ in 0..3 {
                    number(&mut tokens)?;
                }
                expect_word(&mut tokens, "outer")?;
                expect_word(&mut tokens, "loop")?;
                for _ in 0..3 {
                    expect_word(&mut tokens, "vertex")?;
                    let v = [
                        number(&mut tokens)?,
                        number(&mut tokens)?,
                        number(&mut tokens)?,
                    ];
                    w.push(v)?;
                }
                expect_word(&mut tokens, "endloop")?;
                expect_word(&mut tokens, "endfacet")?;
            }
            Some(t) => return Err(bad(&format!("unexpected '{t}'"))),
            None => return Err(bad("truncated, missing 'endsolid'")),
        }
    }
    Ok(w.mesh)
}
