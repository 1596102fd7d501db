//! Per-vertex normals, for formats that carry them (OBJ `vn`, Surface Mesh Vector
//! Coordinate Data).
//!
//! Method: each vertex's normal is the sum of the (unnormalised) cross products of its
//! triangles, i.e. the face normals weighted by twice their area, then made unit length.
//! Why area weighting: it is cheap, independent of how finely a flat region is tessellated
//! near the vertex, and for a counter-clockwise outward mesh it points outward. A vertex
//! that no triangle with area uses (isolated, or only on degenerate triangles) gets `+z`
//! (0, 0, 1), a defined unit vector, so that files never hold NaN or a zero vector.

use super::Mesh;

/// Unit, outward (for a CCW outward mesh), area-weighted vertex normals, one per vertex.
/// Triangles with out-of-range indices are skipped.
pub fn vertex_normals(mesh: &Mesh) -> Vec<[f32; 3]> {
    let mut acc = vec![[0.0f64; 3]; mesh.vertices.len()];
    let p = |i: u32| mesh.vertices[i as usize].map(f64::from);
    for t in mesh.valid_triangles() {
        let (a, b, c) = (p(t[0]), p(t[1]), p(t[2]));
        let u = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
        let v = [c[0] - a[0], c[1] - a[1], c[2] - a[2]];
        let n = [
            u[1] * v[2] - u[2] * v[1],
            u[2] * v[0] - u[0] * v[2],
            u[0] * v[1] - u[1] * v[0],
        ];
        if !n.iter().all(|x| x.is_finite()) {
            continue;
        }
        for &i in &t {
            let s = &mut acc[i as usize];
            s[0] += n[0];
            s[1] += n[1];
            s[2] += n[2];
        }
    }
    acc.into_iter()
        .map(|n| {
            let l = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
            if l > 0.0 && l.is_finite() {
                [(n[0] / l) as f32, (n[1] / l) as f32, (n[2] / l) as f32]
            } else {
                [0.0, 0.0, 1.0]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An octahedron of radius 1 about `c`, CCW outward.
    fn octahedron(c: [f32; 3]) -> Mesh {
        let d = [
            [1.0, 0.0, 0.0],
            [-1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, -1.0, 0.0],
            [0.0, 0.0, 1.0],
            [0.0, 0.0, -1.0],
        ];
        let vertices = d
            .iter()
            .map(|v: &[f32; 3]| [c[0] + v[0], c[1] + v[1], c[2] + v[2]])
            .collect();
        let indices = vec![
            0, 2, 4, 2, 1, 4, 1, 3, 4, 3, 0, 4, 2, 0, 5, 1, 2, 5, 3, 1, 5, 0, 3, 5,
        ];
        Mesh { vertices, indices }
    }

    #[test]
    fn octahedron_normals_point_outward_along_the_axes() {
        let m = octahedron([10.0, -5.0, 3.0]);
        assert!(
            crate::mesh::metrics(&m).volume_mm3 > 0.0,
            "test mesh is outward"
        );
        let n = vertex_normals(&m);
        let want = [
            [1.0, 0.0, 0.0],
            [-1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, -1.0, 0.0],
            [0.0, 0.0, 1.0],
            [0.0, 0.0, -1.0],
        ];
        for (got, want) in n.iter().zip(want) {
            for k in 0..3 {
                assert!((got[k] - want[k]).abs() < 1e-6, "{got:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn isolated_and_degenerate_vertices_get_a_unit_vector() {
        let mut m = octahedron([0.0; 3]);
        m.vertices.push([5.0, 5.0, 5.0]); // isolated
        m.vertices.push([6.0, 6.0, 6.0]);
        m.vertices.push([7.0, 7.0, 7.0]);
        // a degenerate (collinear) triangle
        m.indices.extend_from_slice(&[6, 7, 8]);
        // and an out-of-range one, skipped
        m.indices.extend_from_slice(&[0, 1, 99]);
        let n = vertex_normals(&m);
        assert_eq!(n.len(), m.vertices.len());
        for v in &n {
            let l = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
            assert!(
                (l - 1.0).abs() < 1e-5 && v.iter().all(|c| c.is_finite()),
                "{v:?}"
            );
        }
        assert_eq!(n[6], [0.0, 0.0, 1.0]);
        assert_eq!(n[8], [0.0, 0.0, 1.0]);
    }
}
