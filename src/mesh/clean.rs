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

fn filter_components(mesh: &Mesh, keep: impl Fn(usize) -> bool) -> Mesh {
    let comp = connected_components(mesh);
    let indices = mesh
        .indices
        .chunks_exact(3)
        .zip(&comp)
        .filter(|&(_, &c)| keep(c))
        .flat_map(|(t, _)| t.iter().copied())
        .collect();
    compact(&Mesh {
        vertices: mesh.vertices.clone(),
        indices,
    })
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
}
