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

/// One material of an MTL file (Wavefront "Material Library File", Alias|Wavefront 1995:
/// `newmtl`, `Kd`, `d`).
#[derive(Debug, Clone, PartialEq)]
pub struct Material {
    /// The name that `usemtl` refers to (whitespace is replaced by `_` when written).
    pub name: String,
    /// Diffuse colour, sRGB fractions 0..1.
    pub kd: [f32; 3],
    /// Opacity 0 (transparent) ..1 (opaque), written as `d`.
    pub opacity: f32,
}

/// An OBJ/MTL name: no whitespace (the formats split on it), not empty.
fn obj_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if s.is_empty() { "_".to_string() } else { s }
}

/// Wavefront OBJ text with vertex normals: `mtllib` (when given), `o object_name`,
/// `usemtl` (when given), `v`, `vn` (one per vertex, `normals[i]` for vertex `i`) and
/// 1-based `f a//a b//b c//c` faces. Triangles with out-of-range indices are skipped; when
/// `normals` is not one per vertex, no `vn` are written and faces are `f a b c`.
pub fn write_obj_with(
    mesh: &Mesh,
    normals: &[[f32; 3]],
    object_name: &str,
    mtllib: Option<&str>,
    material: Option<&str>,
) -> String {
    let with_normals = normals.len() == mesh.vertices.len();
    let mut s = String::with_capacity(
        32 * mesh.vertices.len() * if with_normals { 2 } else { 1 } + 30 * mesh.triangle_count(),
    );
    s.push_str("# m3dnode OBJ, units mm, patient coordinates (LPS)\n");
    let _ = writeln!(
        s,
        "# vertices {} triangles {}",
        mesh.vertices.len(),
        mesh.valid_triangles().count()
    );
    if let Some(lib) = mtllib {
        let _ = writeln!(s, "mtllib {}", obj_name(lib));
    }
    let _ = writeln!(s, "o {}", obj_name(object_name));
    for v in &mesh.vertices {
        let _ = writeln!(s, "v {} {} {}", v[0], v[1], v[2]);
    }
    if with_normals {
        for n in normals {
            let _ = writeln!(s, "vn {} {} {}", n[0], n[1], n[2]);
        }
    }
    if let Some(m) = material {
        let _ = writeln!(s, "usemtl {}", obj_name(m));
    }
    for t in mesh.valid_triangles() {
        let [a, b, c] = t.map(|i| u64::from(i) + 1);
        if with_normals {
            let _ = writeln!(s, "f {a}//{a} {b}//{b} {c}//{c}");
        } else {
            let _ = writeln!(s, "f {a} {b} {c}");
        }
    }
    s
}

/// MTL text: one `newmtl` per material with `Ka` (black), `Kd`, `Ks` (black), `illum 1`
/// (diffuse only, no highlights) and `d` (opacity; 1 is opaque).
pub fn write_mtl(materials: &[Material]) -> String {
    let mut s = String::from("# m3dnode MTL\n");
    for m in materials {
        let kd = m.kd.map(|c| {
            if c.is_finite() {
                c.clamp(0.0, 1.0)
            } else {
                0.0
            }
        });
        let d = if m.opacity.is_finite() {
            m.opacity.clamp(0.0, 1.0)
        } else {
            1.0
        };
        let _ = writeln!(s, "newmtl {}", obj_name(&m.name));
        s.push_str("Ka 0 0 0\n");
        let _ = writeln!(s, "Kd {} {} {}", kd[0], kd[1], kd[2]);
        s.push_str("Ks 0 0 0\nillum 1\n");
        let _ = writeln!(s, "d {d}");
    }
    s
}

/// Most vertices [`read_obj`] accepts (and so the largest index): 2^28, far beyond any
/// surface m3dnode makes (a CT head is well under 2^22), and small enough that a hostile
/// file cannot make the reader allocate more than a few GiB.
pub const OBJ_MAX_VERTICES: usize = 1 << 28;

/// Reads the geometry of a Wavefront OBJ text: `v x y z [w]` positions and `f` faces whose
/// corners are `a`, `a/b`, `a//c` or `a/b/c` (only the position index `a` is used), 1-based
/// or negative (relative to the last vertex so far). Polygons with more than three corners
/// are fanned from their first corner. Comments (`#`), blank lines and every other record
/// (`vn`, `vt`, `o`, `g`, `s`, `mtllib`, `usemtl`, ...) are ignored. The mesh's vertices
/// are the `v` records in order, so what [`write_obj_with`] writes reads back equal.
///
/// # Errors
/// [`MeshError::InvalidObj`] on a malformed number or index, an index 0 or out of range, a
/// face with fewer than three corners, a non-finite coordinate, or more than
/// [`OBJ_MAX_VERTICES`] vertices or faces. Never panics.
pub fn read_obj(text: &str) -> Result<Mesh, MeshError> {
    fn bad(line: usize, what: impl std::fmt::Display) -> MeshError {
        MeshError::InvalidObj(format!("line {line}: {what}"))
    }
    let mut mesh = Mesh::default();
    let mut corners: Vec<u32> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line_no = n + 1;
        let line = raw.split('#').next().unwrap_or("");
        let mut words = line.split_ascii_whitespace();
        match words.next() {
            Some("v") => {
                if mesh.vertices.len() >= OBJ_MAX_VERTICES {
                    return Err(bad(line_no, "too many vertices"));
                }
                let mut v = [0f32; 3];
                for c in &mut v {
                    let w = words
                        .next()
                        .ok_or_else(|| bad(line_no, "a vertex needs x y z"))?;
                    *c = w
                        .parse::<f32>()
                        .map_err(|_| bad(line_no, format!("bad number {w:?}")))?;
                    if !c.is_finite() {
                        return Err(bad(line_no, format!("non-finite coordinate {w:?}")));
                    }
                }
                mesh.vertices.push(v);
            }
            Some("f") => {
                corners.clear();
                for w in words {
                    let a = w.split('/').next().unwrap_or("");
                    let i: i64 = a
                        .parse()
                        .map_err(|_| bad(line_no, format!("bad face corner {w:?}")))?;
                    let count = mesh.vertices.len() as i64;
                    let index = match i {
                        0 => return Err(bad(line_no, "index 0 (OBJ indices start at 1)")),
                        i if i > 0 && i <= count => i - 1,
                        i if i < 0 && i.checked_neg().is_some_and(|n| n <= count) => count + i,
                        _ => {
                            return Err(bad(
                                line_no,
                                format!("index {i} with {count} vertices so far"),
                            ));
                        }
                    };
                    // in range of a vector no longer than OBJ_MAX_VERTICES
                    corners.push(index as u32);
                }
                if corners.len() < 3 {
                    return Err(bad(line_no, "a face needs at least three corners"));
                }
                if mesh.indices.len() / 3 + corners.len() > OBJ_MAX_VERTICES {
                    return Err(bad(line_no, "too many faces"));
                }
                for k in 1..corners.len() - 1 {
                    mesh.indices
                        .extend_from_slice(&[corners[0], corners[k], corners[k + 1]]);
                }
            }
            _ => {}
        }
    }
    Ok(mesh)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::vertex_normals;

    fn tetra() -> Mesh {
        Mesh {
            vertices: vec![
                [0.0, 0.0, 0.0],
                [10.5, 0.0, 0.0],
                [0.0, 10.25, 0.0],
                [0.1, 0.2, -1e-7],
            ],
            indices: vec![0, 2, 1, 0, 1, 3, 1, 2, 3, 2, 0, 3],
        }
    }

    #[test]
    fn obj_with_normals_and_material_round_trips() {
        let m = tetra();
        let n = vertex_normals(&m);
        let text = write_obj_with(&m, &n, "Bone surface", Some("model.mtl"), Some("Bone"));
        assert!(text.contains("mtllib model.mtl\n"), "{text}");
        assert!(text.contains("o Bone_surface\n"), "{text}");
        assert!(text.contains("usemtl Bone\n"), "{text}");
        assert!(text.contains("f 1//1 3//3 2//2\n"), "{text}");
        assert_eq!(text.matches("\nvn ").count(), 4);
        assert_eq!(read_obj(&text).expect("read"), m);
        // Without normals: plain faces; today's writer still reads back.
        let plain = write_obj_with(&m, &[], "x", None, None);
        assert!(
            plain.contains("f 1 3 2\n") && !plain.contains("vn"),
            "{plain}"
        );
        assert_eq!(read_obj(&plain).expect("read"), m);
        assert_eq!(read_obj(&write_obj(&m)).expect("read"), m);
    }

    #[test]
    fn read_obj_accepts_every_corner_form_negative_indices_and_polygons() {
        let text = "# a square and a triangle\n\
                    v 0 0 0\nv 1 0 0 1.0\nv 1 1 0\nv 0 1 0  # trailing comment\n\
                    vt 0 0\nvn 0 0 1\ng quad\n\
                    f 1/1/1 2/1/1 3//1 4\n\
                    f -4 -3/1 -1//1\n";
        let m = read_obj(text).expect("read");
        assert_eq!(m.vertices.len(), 4);
        assert_eq!(m.indices, vec![0, 1, 2, 0, 2, 3, 0, 1, 3]);
    }

    #[test]
    fn read_obj_refuses_malformed_and_hostile_input() {
        let cases = [
            ("v 1 2\n", "needs x y z"),
            ("v 1 2 x\n", "bad number"),
            ("v 1 2 inf\n", "non-finite"),
            ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2\n", "at least three"),
            ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 0 1 2\n", "index 0"),
            ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 4\n", "index 4"),
            ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 -4\n", "index -4"),
            (
                "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 99999999999999999999999\n",
                "bad face",
            ),
            (
                "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 -9223372036854775808\n",
                "index",
            ),
            ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 a/b\n", "bad face"),
            ("f 1 2 3\n", "with 0 vertices"),
        ];
        for (text, want) in cases {
            let err = read_obj(text).expect_err(text).to_string();
            assert!(
                err.contains(want) && err.contains("invalid OBJ"),
                "{text:?}: {err}"
            );
        }
        // Binary junk is not a panic; it has no records, so no mesh.
        let junk: String = (0..2000u32)
            .map(|i| char::from((i * 37 % 96 + 32) as u8))
            .collect();
        assert!(read_obj(&junk).map(|m| m.is_empty()).unwrap_or(true));
    }

    #[test]
    fn mtl_holds_colour_and_opacity() {
        let text = write_mtl(&[
            Material {
                name: "Bone".into(),
                kd: [0.89, 0.855, 0.788],
                opacity: 1.0,
            },
            Material {
                name: "Soft skin".into(),
                kd: [2.0, f32::NAN, 0.5],
                opacity: 0.4,
            },
        ]);
        assert!(text.contains("newmtl Bone\n"), "{text}");
        assert!(text.contains("Kd 0.89 0.855 0.788\n"), "{text}");
        assert!(text.contains("newmtl Soft_skin\n"), "{text}");
        assert!(text.contains("Kd 1 0 0.5\n"), "{text}");
        assert!(text.contains("d 0.4\n") && text.contains("d 1\n"), "{text}");
    }
}
