//! TEMPORARY stand-ins for the helpers' APIs (deleted at merge).
#![allow(missing_docs, dead_code)]

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, clap::ValueEnum)]
#[serde(try_from = "String")]
pub enum Format {
    Stl,
    Obj,
    SurfaceSeg,
}
crate::choice!(Format);
impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Stl => "stl",
            Format::Obj => "obj",
            Format::SurfaceSeg => "surface-seg",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cielab {
    pub l: f64,
    pub a: f64,
    pub b: f64,
}
impl Cielab {
    pub fn from_srgb(_rgb: [u8; 3]) -> Cielab {
        Cielab {
            l: 50.0,
            a: 0.0,
            b: 0.0,
        }
    }
    pub fn to_srgb(&self) -> [u8; 3] {
        [128, 128, 128]
    }
}
impl std::fmt::Display for Cielab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [r, g, b] = self.to_srgb();
        write!(f, "#{r:02x}{g:02x}{b:02x}")
    }
}
impl<'de> Deserialize<'de> for Cielab {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let _s = String::deserialize(d)?;
        Ok(Cielab::from_srgb([1, 2, 3]))
    }
}

pub struct StructureMesh<'a> {
    pub label: &'a str,
    pub description: &'a str,
    pub colour: Cielab,
    pub opacity: f32,
    pub mesh: &'a crate::mesh::Mesh,
    pub metrics: &'a crate::mesh::MeshMetrics,
    pub comment: String,
    pub algorithm: &'a str,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Stl,
    Obj,
    Mtl,
    SurfaceSeg,
}
pub struct BuiltObject {
    pub kind: ObjectKind,
    pub format: Format,
    pub structure: Option<usize>,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub object: dicom_object::FileDicomObject<dicom_object::InMemDicomObject>,
}
pub fn build_results(
    vol: &crate::volume::Volume,
    structures: &[StructureMesh<'_>],
    _formats: &[Format],
    ids: &crate::encap::ResultIds,
) -> Result<Vec<BuiltObject>, crate::encap::EncapError> {
    let mut out = Vec::new();
    for (i, s) in structures.iter().enumerate() {
        let stl = crate::mesh::write_stl_binary(s.mesh, s.description);
        let mut ids = ids.clone();
        if i > 0 {
            ids.sop_instance_uid = None;
        }
        let object = crate::encap::from_reconstruction(vol, s.description, s.metrics, &stl, &ids)?;
        out.push(BuiltObject {
            kind: ObjectKind::Stl,
            format: Format::Stl,
            structure: Some(i),
            sop_class_uid: crate::encap::ENCAPSULATED_STL_STORAGE.into(),
            sop_instance_uid: object.meta().media_storage_sop_instance_uid().to_string(),
            object,
        });
    }
    Ok(out)
}
