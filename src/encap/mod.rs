//! DICOM objects that carry surface meshes: wrapping reconstructed surfaces into standard
//! DICOM objects, and getting them back out.
//!
//! A result holds one or more structures ([`StructureMesh`]: bone, skin, ...), and each
//! destination asks for [`Format`]s; [`build_results`] makes every object:
//!
//! * Encapsulated STL (PS3.3 A.85.1), one per structure, in the `M3D` result series;
//! * Encapsulated OBJ + Encapsulated MTL (A.85.2, A.85.3), one pair per structure, in the
//!   same series and one Model Group (how they link: the `obj` module);
//! * Surface Segmentation (A.57), one instance with a Segment and a Surface per structure,
//!   in a `SEG` series of its own (the `surface_seg` module).
//!
//! Colours are [`Cielab`] (DICOM's form), given as `#rrggbb` or `[L, a, b]`.
//!
//! The Encapsulated STL part, as it was first built (PS3.3 §A.85.1, SOP Class
//! `1.2.840.10008.5.1.4.1.1.104.3`):
//!
//! * [`build_encapsulated_stl`] turns a binary STL payload plus facts about the
//!   source series into a complete Part 10 object (file meta included) that
//!   `dciodvfy` accepts without errors or warnings and that `dcentvfy` finds
//!   consistent with the source series: Patient and Study copied from the
//!   source, a new `M3D` series in the source's Frame of Reference, General and
//!   Enhanced General Equipment describing m3dnode, the Encapsulated Document
//!   and Manufacturing 3D Model modules, references to every source image, and
//!   SOP Common.
//! * [`extract_stl`] reads the STL bytes back out of such an object, removing
//!   the pad byte that DICOM adds to odd-length values.
//!
//! UIDs are minted and checked by [`crate::store::uid`], the one place that decides what a
//! UID is.
//!
//! It exists as one place so that the networking and storage code never has
//! to know which attributes the IOD needs: they hand over the mesh and the
//! source series, and get a valid object back.
//!
//! Where the free-text mesh metrics go: the IOD has no Image Comments. They
//! are written to *Comments on the Performed Procedure Step* (0040,0280, ST,
//! up to 1024 characters), which the Encapsulated Document Series module
//! admits through the Performed Procedure Step Summary macro — a standard,
//! series-level, free-text attribute, so no private tags are needed.

mod build;
mod colour;
mod obj;
mod raw;
mod read;
mod surface_seg;

pub use build::build_encapsulated_stl;
pub use colour::{Cielab, ColourError};
pub use obj::{
    ENCAPSULATED_MTL_STORAGE, ENCAPSULATED_OBJ_STORAGE, MTL_MIME_TYPE, OBJ_MIME_TYPE, mtl_file_name,
};
pub use raw::stored_values;
pub use read::{extract_stl, extract_text_document};
pub use surface_seg::{SEG_SERIES_NUMBER, SURFACE_SEGMENTATION_STORAGE};

use dicom_object::InMemDicomObject;

/// SOP Class UID of the Encapsulated STL Storage SOP Class.
pub const ENCAPSULATED_STL_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.104.3";

/// MIME type of an encapsulated STL document.
pub const STL_MIME_TYPE: &str = "model/stl";

/// Modality of a series of 3D manufacturing models.
pub const MODALITY_M3D: &str = "M3D";

/// Facts about the source series the mesh was made from.
#[derive(Debug, Clone)]
pub struct SourceSeries {
    /// One source instance's data set. Patient, Study and Frame of Reference
    /// attributes (and the Specific Character Set) are copied from it.
    pub representative: InMemDicomObject,
    /// Every source image, each referenced from the result.
    pub instances: Vec<SourceInstance>,
    /// Series Instance UID of the source series.
    pub series_instance_uid: String,
}

/// One source image, as referenced from the Encapsulated STL object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInstance {
    /// SOP Class UID of the source image.
    pub sop_class_uid: String,
    /// SOP Instance UID of the source image.
    pub sop_instance_uid: String,
}

impl SourceSeries {
    /// Describes a source series from its files: the first file's header (read up to, not
    /// including, Pixel Data) is the representative; `instances` lists every source image.
    /// The representative's text values (and Specific Character Set) hold the bytes stored
    /// in the file, so that the result carries them unchanged whatever the character set
    /// (see `raw.rs`).
    pub fn load(
        representative_path: &std::path::Path,
        instances: Vec<SourceInstance>,
        series_instance_uid: &str,
    ) -> Result<SourceSeries, EncapError> {
        let obj = dicom_object::OpenFileOptions::new()
            .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
            .open_file(representative_path)
            .map_err(|e| EncapError::ReadSource {
                path: representative_path.to_path_buf(),
                message: e.to_string(),
            })?;
        let mut representative = obj.into_inner();
        raw::keep_stored_text(&mut representative, &stored_values(representative_path)?);
        Ok(SourceSeries {
            representative,
            instances,
            series_instance_uid: series_instance_uid.to_string(),
        })
    }
}

impl SourceInstance {
    /// Take the SOP Class and SOP Instance UIDs from a source data set.
    pub fn from_object(obj: &InMemDicomObject) -> Result<Self, EncapError> {
        use dicom_dictionary_std::tags;
        let get = |tag, name| build::required_uid(obj, tag, name);
        Ok(SourceInstance {
            sop_class_uid: get(tags::SOP_CLASS_UID, "SOPClassUID")?,
            sop_instance_uid: get(tags::SOP_INSTANCE_UID, "SOPInstanceUID")?,
        })
    }
}

/// The equipment that creates the Encapsulated STL object (General and
/// Enhanced General Equipment modules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Equipment {
    /// Manufacturer (0008,0070).
    pub manufacturer: String,
    /// Manufacturer's Model Name (0008,1090).
    pub model_name: String,
    /// Device Serial Number (0018,1000).
    pub device_serial_number: String,
    /// Software Versions (0018,1020).
    pub software_versions: String,
    /// Institution Name (0008,0080), if known.
    pub institution_name: Option<String>,
}

impl Default for Equipment {
    /// `m3dnode` / `m3dnode`, the host name as serial number (or `m3dnode`
    /// when it cannot be found) and this crate's version.
    fn default() -> Self {
        Equipment {
            manufacturer: "m3dnode".to_string(),
            model_name: "m3dnode".to_string(),
            device_serial_number: host_name().unwrap_or_else(|| "m3dnode".to_string()),
            software_versions: env!("CARGO_PKG_VERSION").to_string(),
            institution_name: None,
        }
    }
}

/// The machine's host name, from the kernel or the environment.
fn host_name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .chain(std::env::var("HOSTNAME").ok())
        .chain(std::env::var("COMPUTERNAME").ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
}

/// Everything about the new object that does not come from the source series.
#[derive(Debug, Clone)]
pub struct EncapRequest<'a> {
    /// The STL payload (binary STL as m3dnode writes it; ASCII STL is also
    /// accepted, the bytes are stored verbatim).
    pub stl: &'a [u8],
    /// Document Title: what the surface is, e.g. "Bone surface, iso 300 HU".
    pub document_title: String,
    /// Series Description of the new series (cut to 64 characters).
    pub series_description: String,
    /// Series Instance UID of the result series; `None` mints a new one.
    /// A rebuild passes the previous result series here. Must differ from
    /// the source series.
    pub series_instance_uid: Option<String>,
    /// SOP Instance UID of the result; `None` mints a new one.
    pub sop_instance_uid: Option<String>,
    /// Series Number of the result series.
    pub series_number: i32,
    /// Instance Number of the result.
    pub instance_number: i32,
    /// Content Date and Time as DICOM DA and TM strings; `None` uses the
    /// current local time.
    pub content_datetime: Option<(String, String)>,
    /// The equipment creating the object.
    pub equipment: Equipment,
    /// Free text about the mesh (e.g. "triangles=…, volume_mm3=…,
    /// watertight=yes"), written to Comments on the Performed Procedure Step
    /// (0040,0280); cut to 1024 characters.
    pub metrics_comment: Option<String>,
}

/// What went wrong while building or reading an Encapsulated STL object.
#[derive(Debug, thiserror::Error)]
pub enum EncapError {
    /// The STL payload is empty.
    #[error("the STL payload is empty")]
    EmptyStl,
    /// The STL payload does not fit a DICOM value (32-bit length, even).
    #[error("the STL payload of {0} bytes is too large for one DICOM value")]
    StlTooLarge(usize),
    /// The source series lists no instances to reference.
    #[error("the source series lists no instances")]
    NoSourceInstances,
    /// The representative source file could not be read.
    #[error("could not read source file {path}: {message}")]
    ReadSource {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        message: String,
    },
    /// A required attribute is missing from the source data set.
    #[error("the source data set has no {0}")]
    MissingSourceAttribute(&'static str),
    /// A UID (given or taken from the source) is not a valid UID.
    #[error("{field} is not a valid UID: {value:?}")]
    InvalidUid {
        /// Which UID.
        field: &'static str,
        /// The offending value.
        value: String,
    },
    /// The requested result series is the source series itself.
    #[error("the result series UID {0} is the source series UID")]
    SeriesUidIsSource(String),
    /// The requested result instance UID is one of the source instances.
    #[error("the result SOP Instance UID {0} is a source instance UID")]
    SopInstanceUidIsSource(String),
    /// Content Date or Time is not a valid DA / TM value.
    #[error("invalid {field} {value:?}")]
    InvalidDateTime {
        /// "Content Date" or "Content Time".
        field: &'static str,
        /// The offending value.
        value: String,
    },
    /// A type 1 equipment attribute would be empty.
    #[error("equipment attribute {0} is empty")]
    EmptyEquipment(&'static str),
    /// The file meta group could not be built.
    #[error("could not build the file meta group")]
    FileMeta(#[source] dicom_object::WithMetaError),
    /// The object is not an Encapsulated STL (wrong SOP class or MIME type).
    #[error("not an encapsulated STL object: {0}")]
    NotEncapsulatedStl(String),
    /// The object has no Encapsulated Document value.
    #[error("the object has no Encapsulated Document (0042,0011)")]
    MissingDocument,
    /// The Encapsulated Document or its length could not be read.
    #[error("could not read {0}")]
    ReadValue(&'static str, #[source] dicom_core::value::ConvertValueError),
    /// The object is not the encapsulated document expected (wrong MIME type, not text).
    #[error("not the expected encapsulated document: {0}")]
    WrongDocument(String),
    /// A result was asked for without any structure.
    #[error("a result needs at least one structure")]
    NoStructures,
    /// More structures than the numbering allows.
    #[error("{0} structures is more than one result can hold (at most 999)")]
    TooManyStructures(usize),
    /// A structure's mesh has no triangles.
    #[error("the surface of {0:?} has no triangles")]
    EmptyMesh(String),
    /// A structure's mesh is too large for one DICOM value.
    #[error("the surface of {0:?} is too large for one DICOM value")]
    MeshTooLarge(String),
    /// The rebuild version (instance number) is beyond the numbering scheme.
    #[error("instance number {0} is out of range (1..=99999)")]
    InstanceNumberOutOfRange(i32),
    /// Encapsulated Document Length does not fit the stored value.
    #[error("Encapsulated Document Length {declared} does not fit the {stored} stored bytes")]
    LengthMismatch {
        /// Encapsulated Document Length (0042,0015).
        declared: u64,
        /// Bytes in Encapsulated Document (0042,0011).
        stored: usize,
    },
}

/// UIDs and numbering of a result; `None` UIDs are generated.
#[derive(Debug, Clone, Default)]
pub struct ResultIds {
    /// Result series (a rebuild reuses the previous one).
    pub series_instance_uid: Option<String>,
    /// Result instance (a job fixes it when it is queued, so a re-run after a crash makes the
    /// same instance, not a second one).
    pub sop_instance_uid: Option<String>,
    /// Instance Number: 1, then one more per rebuild (0 means 1).
    pub instance_number: i32,
}

/// Wraps a reconstruction of `vol` as an Encapsulated STL object in the source's study,
/// with the mesh metrics in the object. (One structure, STL only: what
/// [`build_results`] makes for structure 0 with [`Format::Stl`], except the Series
/// Description and the comment's label prefix.)
pub fn from_reconstruction(
    vol: &crate::volume::Volume,
    description: &str,
    m: &crate::mesh::MeshMetrics,
    stl: &[u8],
    ids: &ResultIds,
) -> Result<dicom_object::DefaultDicomObject, EncapError> {
    let source = load_source(vol)?;
    let request = EncapRequest {
        stl,
        document_title: description.to_string(),
        series_description: format!("3D model: {description}"),
        series_instance_uid: ids.series_instance_uid.clone(),
        sop_instance_uid: ids.sop_instance_uid.clone(),
        series_number: M3D_SERIES_NUMBER,
        instance_number: ids.instance_number.max(1),
        content_datetime: None,
        equipment: Equipment::default(),
        metrics_comment: Some(metrics_comment(m)),
    };
    build_encapsulated_stl(&source, &request)
}

/// The one-line summary of a mesh's metrics that results carry as free text
/// (`triangles=... vertices=... volume_mm3=... area_mm2=... watertight=... manifold=...
/// bbox_mm=[...]..[...]`), e.g. for [`StructureMesh::comment`].
pub fn metrics_comment(m: &crate::mesh::MeshMetrics) -> String {
    format!(
        "triangles={} vertices={} volume_mm3={:.1} area_mm2={:.1} watertight={} manifold={} bbox_mm=[{:.1},{:.1},{:.1}]..[{:.1},{:.1},{:.1}]",
        m.triangles,
        m.vertices,
        m.volume_mm3,
        m.area_mm2,
        m.watertight,
        m.manifold,
        m.bbox_min[0],
        m.bbox_min[1],
        m.bbox_min[2],
        m.bbox_max[0],
        m.bbox_max[1],
        m.bbox_max[2]
    )
}

/// Series Number of the result series holding the STL, OBJ and MTL objects.
pub const M3D_SERIES_NUMBER: i32 = 9901;

/// An output format a destination asks for: `stl` (Encapsulated STL, one per structure),
/// `obj` (Encapsulated OBJ + MTL, one pair per structure, one Model Group) or `surface-seg`
/// (one Surface Segmentation holding every structure).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize, clap::ValueEnum,
)]
#[serde(try_from = "String")]
pub enum Format {
    /// Encapsulated STL (PS3.3 A.85.1).
    Stl,
    /// Encapsulated OBJ with its Encapsulated MTL (PS3.3 A.85.2, A.85.3).
    Obj,
    /// Surface Segmentation (PS3.3 A.57).
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

/// One structure of a result (e.g. bone or skin) with what every format needs.
#[derive(Debug, Clone)]
pub struct StructureMesh<'a> {
    /// Short name: "Bone", "Skin" (Segment Label, OBJ object/material names, MTL file name).
    pub label: &'a str,
    /// What the surface is: "Bone surface, iso 300 HU" (Document Title of its STL/OBJ,
    /// Segment Description).
    pub description: &'a str,
    /// Recommended display colour.
    pub colour: Cielab,
    /// Recommended opacity, 0 (transparent) to 1 (opaque).
    pub opacity: f32,
    /// The surface, patient LPS mm, CCW outward.
    pub mesh: &'a crate::mesh::Mesh,
    /// Its metrics (Finite Volume and Manifold of the Surface Segmentation).
    pub metrics: &'a crate::mesh::MeshMetrics,
    /// Free text (metrics, dropped components); all structures' comments go, prefixed by
    /// their labels, to Comments on the Performed Procedure Step, a series-level attribute.
    pub comment: String,
    /// The algorithm, e.g. "m3dnode iso threshold 300 HU" (Segment Algorithm Name).
    pub algorithm: &'a str,
}

/// What one built object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// Encapsulated STL.
    Stl,
    /// Encapsulated OBJ.
    Obj,
    /// Encapsulated MTL (belongs to the OBJ format).
    Mtl,
    /// Surface Segmentation.
    SurfaceSeg,
}

/// One object of a result, ready to store and send.
#[derive(Debug, Clone)]
pub struct BuiltObject {
    /// What it is.
    pub kind: ObjectKind,
    /// The destination format it belongs to (an MTL belongs to [`Format::Obj`]).
    pub format: Format,
    /// Index of its structure; `None` for the Surface Segmentation, which holds them all.
    pub structure: Option<usize>,
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// The Part 10 object.
    pub object: dicom_object::FileDicomObject<dicom_object::InMemDicomObject>,
}

/// Highest rebuild version the instance numbering takes (see [`build_results`]).
const MAX_VERSION: i32 = 99_999;

/// Builds every object of a result: for each format in `formats` (deduplicated, built in
/// the order STL, OBJ, Surface Segmentation), the objects of all `structures`, made from
/// the series `vol` was assembled from.
///
/// Identity, so that a job re-run after a crash makes the same instances:
/// * the result series is `ids.series_instance_uid` (new when `None`), Series Number 9901,
///   Modality M3D: the STL, OBJ and MTL objects; the Surface Segmentation is in a series of
///   its own (Modality SEG, Series Number 9902) whose UID is
///   `derived_uid(result series, "seg-series")` (see the `surface_seg` module);
/// * structure 0's STL has `ids.sop_instance_uid` (as [`from_reconstruction`] gives the one
///   STL of today's results); every other object has `derived_uid(base, "stl/N" | "obj/N"
///   | "mtl/N" | "seg")` from that same base UID (minted when `None`), and the OBJ/MTL
///   Model Group UID is `derived_uid(base, "model-group")`;
/// * Instance Number = version + 100000 × slot, where version = `ids.instance_number`
///   (at least 1, at most 99999) and slot = N for STL N, 1000 + N for OBJ N, 2000 + N for
///   MTL N: distinct within the series, structure 0's STL keeps today's number, and each
///   object's number grows with the rebuild version. The Surface Segmentation has the
///   version.
///
/// Series-level text must be the same in every instance of a series, so Series
/// Description ("3D model: Bone, Skin") and the comment (every structure's, prefixed with
/// its label) are built once for the whole result.
pub fn build_results(
    vol: &crate::volume::Volume,
    structures: &[StructureMesh<'_>],
    formats: &[Format],
    ids: &ResultIds,
) -> Result<Vec<BuiltObject>, EncapError> {
    use crate::store::uid::{derived_uid, new_uid};
    if structures.is_empty() {
        return Err(EncapError::NoStructures);
    }
    if structures.len() > 999 {
        return Err(EncapError::TooManyStructures(structures.len()));
    }
    let version = ids.instance_number.max(1);
    if version > MAX_VERSION {
        return Err(EncapError::InstanceNumberOutOfRange(ids.instance_number));
    }
    let mut formats = formats.to_vec();
    formats.sort();
    formats.dedup();
    let source = load_source(vol)?;
    let base_uid = ids.sop_instance_uid.clone().unwrap_or_else(new_uid);
    let series_uid = ids.series_instance_uid.clone().unwrap_or_else(new_uid);
    let labels: Vec<&str> = structures.iter().map(|s| s.label).collect();
    let series_description = format!("3D model: {}", labels.join(", "));
    let comment = structures
        .iter()
        .map(|s| format!("{}: {}", s.label, s.comment))
        .collect::<Vec<_>>()
        .join("\n");
    let shared = SharedSeries {
        series_uid: series_uid.clone(),
        description: series_description,
        comment,
    };
    let number = |slot: usize| version + 100_000 * slot as i32;
    let mut out = Vec::new();
    let mut push =
        |kind, format, structure, sop_class_uid: &str, object: dicom_object::DefaultDicomObject| {
            let sop_instance_uid = object
                .meta()
                .media_storage_sop_instance_uid()
                .trim_end_matches('\0')
                .to_string();
            out.push(BuiltObject {
                kind,
                format,
                structure,
                sop_class_uid: sop_class_uid.to_string(),
                sop_instance_uid,
                object,
            });
        };
    for format in formats {
        match format {
            Format::Stl => {
                for (i, s) in structures.iter().enumerate() {
                    let uid = if i == 0 {
                        base_uid.clone()
                    } else {
                        derived_uid(&base_uid, &format!("stl/{i}"))
                    };
                    if s.mesh.is_empty() {
                        return Err(EncapError::EmptyMesh(s.label.to_string()));
                    }
                    let stl = crate::mesh::write_stl_binary(s.mesh, s.description);
                    let req = shared.request(&stl, s.description.to_string(), uid, number(i));
                    let obj = build_encapsulated_stl(&source, &req)?;
                    push(
                        ObjectKind::Stl,
                        Format::Stl,
                        Some(i),
                        ENCAPSULATED_STL_STORAGE,
                        obj,
                    );
                }
            }
            Format::Obj => {
                let group = derived_uid(&base_uid, "model-group");
                for (i, s) in structures.iter().enumerate() {
                    if s.mesh.is_empty() {
                        return Err(EncapError::EmptyMesh(s.label.to_string()));
                    }
                    let obj_uid = derived_uid(&base_uid, &format!("obj/{i}"));
                    let mtl_uid = derived_uid(&base_uid, &format!("mtl/{i}"));
                    let mtl_name = mtl_file_name(i, s.label);
                    let text = obj::obj_text(s, &mtl_name);
                    let req = shared.request(
                        text.as_bytes(),
                        s.description.to_string(),
                        obj_uid,
                        number(1000 + i),
                    );
                    let o = obj::build_obj(&source, &req, s, &group, &mtl_uid, &mtl_name)?;
                    push(
                        ObjectKind::Obj,
                        Format::Obj,
                        Some(i),
                        ENCAPSULATED_OBJ_STORAGE,
                        o,
                    );
                    let text = obj::mtl_text(s);
                    let req = shared.request(
                        text.as_bytes(),
                        format!("{} material", s.label),
                        mtl_uid,
                        number(2000 + i),
                    );
                    let m = obj::build_mtl(&source, &req, &group)?;
                    push(
                        ObjectKind::Mtl,
                        Format::Obj,
                        Some(i),
                        ENCAPSULATED_MTL_STORAGE,
                        m,
                    );
                }
            }
            Format::SurfaceSeg => {
                let mut req =
                    shared.request(&[], String::new(), derived_uid(&base_uid, "seg"), version);
                req.series_instance_uid = Some(derived_uid(&series_uid, "seg-series"));
                req.series_number = SEG_SERIES_NUMBER;
                req.series_description = format!("Surfaces: {}", labels.join(", "));
                let o = surface_seg::build_surface_segmentation(&source, &req, structures)?;
                push(
                    ObjectKind::SurfaceSeg,
                    Format::SurfaceSeg,
                    None,
                    SURFACE_SEGMENTATION_STORAGE,
                    o,
                );
            }
        }
    }
    Ok(out)
}

/// The source series of a volume: its first file's header and every source image.
fn load_source(vol: &crate::volume::Volume) -> Result<SourceSeries, EncapError> {
    let first = vol.sources.first().ok_or(EncapError::NoSourceInstances)?;
    let instances = vol
        .sources
        .iter()
        .map(|s| SourceInstance {
            sop_class_uid: s.sop_class_uid.clone(),
            sop_instance_uid: s.sop_instance_uid.clone(),
        })
        .collect();
    SourceSeries::load(&first.path, instances, &vol.series_instance_uid)
}

/// What every object of the M3D series shares (series-level attributes).
struct SharedSeries {
    series_uid: String,
    description: String,
    comment: String,
}

impl SharedSeries {
    fn request<'p>(
        &self,
        payload: &'p [u8],
        title: String,
        uid: String,
        number: i32,
    ) -> EncapRequest<'p> {
        EncapRequest {
            stl: payload,
            document_title: title,
            series_description: self.description.clone(),
            series_instance_uid: Some(self.series_uid.clone()),
            sop_instance_uid: Some(uid),
            series_number: M3D_SERIES_NUMBER,
            instance_number: number,
            content_datetime: None,
            equipment: Equipment::default(),
            metrics_comment: Some(self.comment.clone()),
        }
    }
}
