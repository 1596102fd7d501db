//! Mesh cleanup: connected components and compaction.
//!
//! Method: union-find (disjoint-set forest with path halving and union by
//! size; Tarjan 1975, "Efficiency of a good but not linear set union
//! algorithm") over vertices, joining the three vertices of every triangle.
//!
//! Why: iso-surfaces of clinical volumes contain many small islands (noise,
//! table parts, vessels cut at the border). Printing or measuring usually
//! wants only the main object, so components are ranked by size with a
//! deterministic tie-break, and every filter ends with [`compact`] so that the
//! returned meshes never carry unused vertices.

use super::Mesh;

struct Dsu {
    parent: Vec<u32>,
    size: Vec<u32>,
}

impl Dsu {
    fn new(n: usize) -> Self {
        Dsu {
            parent: (0..n as u32).collect(),
            size: vec![1; n],
        }
    }

    fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let gp = self.parent[self.parent[x as usize] as usize];
            self.parent[x as usize] = gp;
            x = gp;
        }
        x
    }

    fn union(&mut self, a: u32, b: u32) {
        let (mut a, mut b) = (self.find(a), self.find(b));
        if a == b {
            return;
        }
        if self.size[a as usize] < self.size[b as usize] {
            std::mem::swap(&mut a, &mut b);
        }
        self.parent[b as usize] = a;
        self.size[a as usize] += self.size[b as usize];
    }
}

/// Component id of every triangle (`mesh.triangle_count()` entries).
/// Triangles are connected when they share a vertex. Ids are ranked by
/// triangle count, largest first (id 0 = largest); ties go to the component
/// whose first triangle comes first. A triangle with out-of-range indices is
/// joined through its valid indices only (or is a component of its own).
pub fn connected_components(mesh: &Mesh) -> Vec<usize> {
    let nv = mesh.vertices.len();
    let tris: Vec<&[u32]> = mesh.indices.chunks_exact(3).collect();
    let mut dsu = Dsu::new(nv);
    for t in &tris {
        let mut valid = t.iter().copied().filter(|&i| (i as usize) < nv);
        if let Some(first) = valid.next() {
            for other in valid {
                dsu.union(first, other);
            }
        }
    }
    // Provisional label per triangle: root vertex, or a fresh label.
    const UNSET: usize = usize::MAX;
    let mut label_of_root = vec![UNSET; nv];
    let mut labels = Vec::with_capacity(tris.len());
    let mut sizes: Vec<usize> = Vec::new();
    for t in &tris {
        let root = t.iter().copied().find(|&i| (i as usize) < nv);
        let label = match root {
            Some(v) => {
                let r = dsu.find(v) as usize;
                if label_of_root[r] == UNSET {
                    label_of_root[r] = sizes.len();
                    sizes.push(0);
                }
                label_of_root[r]
            }
            None => {
                sizes.push(0);
                sizes.len() - 1
            }
        };
        sizes[label] += 1;
        labels.push(label);
    }
    // Labels are already in order of first triangle; a stable sort by size
    // keeps that as the tie-break.
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|&a, &b| sizes[b].cmp(&sizes[a]));
    let mut rank = vec![0; sizes.len()];
    for (r, &l) in order.iter().enumerate() {
        rank[l] = r;
    }
    labels.into_iter().map(|l| rank[l]).collect()
}

/// Measurements of one connected component, see [`component_stats`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ComponentStats {
    /// Triangles of the component.
    pub triangles: usize,
    /// Distinct vertices its triangles use.
    pub vertices: usize,
    /// Signed enclosed volume in mm³ (divergence theorem, as [`super::metrics`]): positive
    /// for a closed outward-wound surface; a hollow shell gives outer minus inner.
    pub volume_mm3: f64,
    /// Mean position of its vertices in mm (the vertex centroid, not the centre of mass).
    pub centroid_mm: [f64; 3],
}

/// Per-component triangles, vertices, signed volume and vertex centroid, indexed by the
/// labels of [`connected_components`] (`labels` has one entry per triangle). Triangles with
/// out-of-range indices count as triangles but add no volume.
pub fn component_stats(mesh: &Mesh, labels: &[usize]) -> Vec<ComponentStats> {
    let count = labels.iter().max().map_or(0, |m| m + 1);
    let mut out = vec![
        ComponentStats {
            triangles: 0,
            vertices: 0,
            volume_mm3: 0.0,
            centroid_mm: [0.0; 3],
        };
        count
    ];
    let nv = mesh.vertices.len();
    // Reference point for the signed tetrahedra: the first vertex, to keep the products
    // small (the volume does not depend on it for a closed surface).
    let o = mesh.vertices.first().map_or([0.0; 3], |p| p.map(f64::from));
    let pos = |i: u32| {
        let p = mesh.vertices[i as usize];
        [
            f64::from(p[0]) - o[0],
            f64::from(p[1]) - o[1],
            f64::from(p[2]) - o[2],
        ]
    };
    let mut vertex_comp = vec![usize::MAX; nv];
    for (t, &c) in mesh.indices.chunks_exact(3).zip(labels) {
        let s = &mut out[c];
        s.triangles += 1;
        if t.iter().any(|&i| i as usize >= nv) {
            continue;
        }
        let (a, b, d) = (pos(t[0]), pos(t[1]), pos(t[2]));
        s.volume_mm3 += super::metrics::dot(a, super::metrics::cross(b, d)) / 6.0;
        for &i in t {
            vertex_comp[i as usize] = c;
        }
    }
    for (v, &c) in vertex_comp.iter().enumerate() {
        if let Some(s) = out.get_mut(c) {
            s.vertices += 1;
            for (sum, &x) in s.centroid_mm.iter_mut().zip(&mesh.vertices[v]) {
                *sum += f64::from(x);
            }
        }
    }
    for s in &mut out {
        if s.vertices > 0 {
            s.centroid_mm = s.centroid_mm.map(|x| x / s.vertices as f64);
        }
    }
    out
}

/// The triangles whose component label (from [`connected_components`], one per triangle)
/// passes `keep`, compacted.
pub fn keep_components(mesh: &Mesh, labels: &[usize], keep: impl Fn(usize) -> bool) -> Mesh {
    let indices = mesh
        .indices
        .chunks_exact(3)
        .zip(labels)
        .filter(|&(_, &c)| keep(c))
        .flat_map(|(t, _)| t.iter().copied())
        .collect();
    compact(&Mesh {
        vertices: mesh.vertices.clone(),
        indices,
    })
}

fn filter_components(mesh: &Mesh, keep: impl Fn(usize) -> bool) -> Mesh {
    keep_components(mesh, &connected_components(mesh), keep)
}

/// The largest connected component (by triangle count), compacted. An
/// empty mesh stays empty.
pub fn keep_largest_component(mesh: &Mesh) -> Mesh {
    filter_components(mesh, |c| c == 0)
}

/// Drops components with fewer than `min_triangles` triangles, then compacts.
pub fn remove_small_components(mesh: &Mesh, min_triangles: usize) -> Mesh {
    let comp = connected_components(mesh);
    let mut sizes = vec![0usize; comp.iter().max().map_or(0, |m| m + 1)];
    for &c in &comp {
        sizes[c] += 1;
    }
    filter_components(mesh, |c| sizes.get(c).is_some_and(|&s| s >= min_triangles))
}

/// Removes triangles that are degenerate (two equal indices) or reference
/// missing vertices, and vertices no triangle uses. The order of the
/// remaining vertices and triangles is preserved.
pub fn compact(mesh: &Mesh) -> Mesh {
    let nv = mesh.vertices.len();
    const UNUSED: u32 = u32::MAX;
    let mut remap = vec![UNUSED; nv];
    let mut used = 0usize;
    let mut kept: Vec<u32> = Vec::with_capacity(mesh.indices.len());
    for t in mesh.indices.chunks_exact(3) {
        let ok =
            t.iter().all(|&i| (i as usize) < nv) && t[0] != t[1] && t[1] != t[2] && t[0] != t[2];
        if ok {
            kept.extend_from_slice(t);
            for &i in t {
                if remap[i as usize] == UNUSED {
                    remap[i as usize] = 0;
                    used += 1;
                }
            }
        }
    }
    let mut vertices = Vec::with_capacity(used);
    for (old, r) in remap.iter_mut().enumerate() {
        if *r != UNUSED {
            *r = vertices.len() as u32;
            vertices.push(mesh.vertices[old]);
        }
    }
    for i in &mut kept {
        *i = remap[*i as usize];
    }
    Mesh {
        vertices,
        indices: kept,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_drops_degenerate_and_unused() {
        let m = Mesh {
            vertices: vec![[0.0; 3], [1.0, 0.0, 0.0], [9.0; 3], [0.0, 1.0, 0.0]],
            indices: vec![0, 1, 3, 1, 1, 3, 0, 1, 7],
        };
        let c = compact(&m);
        assert_eq!(c.vertices, vec![[0.0; 3], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]);
        assert_eq!(c.indices, vec![0, 1, 2]);
    }

    #[test]
    fn components_ranked_by_size() {
        // Triangle A (1 tri), then a 2-triangle quad B.
        let m = Mesh {
            vertices: vec![[0.0; 3]; 7],
            indices: vec![0, 1, 2, 3, 4, 5, 3, 5, 6],
        };
        assert_eq!(connected_components(&m), vec![1, 0, 0]);
        assert_eq!(keep_largest_component(&m).triangle_count(), 2);
        assert_eq!(remove_small_components(&m, 2).triangle_count(), 2);
        assert_eq!(remove_small_components(&m, 1).triangle_count(), 3);
    }

    #[test]
    fn component_stats_measure_each_piece() {
        // Two unit-corner tetrahedra, the second shifted by 10 along x and twice the size.
        let tetra = |s: f32, x: f32| [[x, 0.0, 0.0], [x + s, 0.0, 0.0], [x, s, 0.0], [x, 0.0, s]];
        let mut m = Mesh::default();
        for (s, x) in [(1.0, 0.0), (2.0, 10.0)] {
            let b = m.vertices.len() as u32;
            m.vertices.extend(tetra(s, x));
            for t in [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]] {
                m.indices.extend(t.iter().map(|&k| b + k));
            }
        }
        let labels = connected_components(&m);
        let st = component_stats(&m, &labels);
        assert_eq!(st.len(), 2);
        // Equal triangle counts: the first one comes first.
        assert!((st[0].volume_mm3 - 1.0 / 6.0).abs() < 1e-9, "{st:?}");
        assert!((st[1].volume_mm3 - 8.0 / 6.0).abs() < 1e-9, "{st:?}");
        assert_eq!((st[1].triangles, st[1].vertices), (4, 4));
        assert_eq!(st[1].centroid_mm, [10.5, 0.5, 0.5]);
        let second = keep_components(&m, &labels, |c| c == 1);
        assert_eq!(second.vertices, tetra(2.0, 10.0).to_vec());
        assert_eq!(second.triangle_count(), 4);
    }
}
