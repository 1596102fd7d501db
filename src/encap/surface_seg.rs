//! Surface Segmentation (PS3.3 A.57, SOP Class `1.2.840.10008.5.1.4.1.1.66.5`): every
//! structure of a result as one Segment with one Surface, in one instance.
//!
//! Module by module (IOD table A.57.3-1):
//!
//! | IE | module | how |
//! |---|---|---|
//! | Patient, Study | as the Encapsulated STL ([`super::build`]) | copied from the source |
//! | Series | General Series (C.7.3.1), Segmentation Series (C.8.20.1) | Modality `SEG`, a series of its own (see below), Series Number 9902 |
//! | Frame of Reference | Frame of Reference (C.7.4.1) | the source's: points are in its patient coordinates |
//! | Equipment | General and Enhanced General Equipment | m3dnode |
//! | Surface | Surface Segmentation (C.8.23.1), Surface Mesh (C.27.1), Common Instance Reference (C.12.2), SOP Common | built here |
//!
//! Why its own series: the Segmentation Series module requires Modality `SEG`, and a series
//! has one modality, so the Surface Segmentation cannot join the `M3D` series of the STL and
//! OBJ objects. Its Series Instance UID is derived from the result series
//! ([`crate::store::uid::derived_uid`]`(result series, "seg-series")`), so a rebuild that
//! reuses the result series reuses it too.
//!
//! Per structure (Segment Number = Surface Number = index + 1):
//! * Segment Sequence (Segment Description macro, C.8.20-4): Segment Label; Segmented
//!   Property Category and Type from CID 7150 and CID 7191 "Tissue Segmentation Property
//!   Type": category Tissue (SCT 85756007) with type Bone (SCT 3138006, bone *tissue*) for a
//!   label naming bone or skull, Skin (SCT 39937001) for skin, and Tissue (SCT 85756007)
//!   otherwise. (SCT 272673000 "Bone structure" is an anatomic *structure* code, not in the
//!   tissue type context group that goes with the Tissue category.) Segment Algorithm Type
//!   AUTOMATIC; Referenced Surface Sequence with the generation algorithm
//!   (Algorithm Identification macro: family from CID 7162, DCM 123105 "Histogram Analysis"
//!   for threshold pipelines, DCM 123110 "Artificial Intelligence" for learned ones; name;
//!   version = the m3dnode version) and every source image in the Segment Surface Source
//!   Instance Sequence.
//! * Surface Sequence: Recommended Display Grayscale (from L*) and CIELab Values,
//!   Recommended Presentation Opacity and Type (SURFACE), Finite Volume (YES when the mesh
//!   is watertight and consistently oriented, else NO) and Manifold (YES/NO) from the
//!   metrics, points as Point Coordinates Data (OF, float32 x y z in mm), unit vertex
//!   normals (Vector Coordinate Data, OF, dimensionality 3) and triangles as Long Triangle
//!   Point Index List (OL, 32-bit, **1-based** indices into the points, as C.27.4 says).

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};

use super::build::{
    Base, LO_MAX, clean_line, code_item, put_common_instance_reference, put_str, source_references,
};
use super::{EncapError, EncapRequest, SourceSeries, StructureMesh};

/// SOP Class UID of Surface Segmentation Storage.
pub const SURFACE_SEGMENTATION_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.5";

/// Series Number of the Surface Segmentation series (the M3D series is 9901).
pub const SEG_SERIES_NUMBER: i32 = 9902;

/// Segmented Property Category and Type codes for a structure label (see the module docs).
fn property_codes(label: &str) -> (InMemDicomObject, InMemDicomObject) {
    let category = code_item("85756007", "SCT", "Tissue");
    let l = label.to_ascii_lowercase();
    let kind = if l.contains("bone") || l.contains("skull") {
        code_item("3138006", "SCT", "Bone")
    } else if l.contains("skin") {
        code_item("39937001", "SCT", "Skin")
    } else {
        code_item("85756007", "SCT", "Tissue")
    };
    (category, kind)
}

/// Algorithm Family Code Sequence item (CID 7162) for an algorithm name.
fn algorithm_family(algorithm: &str) -> InMemDicomObject {
    let a = algorithm.to_ascii_lowercase();
    if ["neus", "neural", "network", "onnx", "model", "ai "]
        .iter()
        .any(|w| a.contains(w))
    {
        code_item("123110", "DCM", "Artificial Intelligence")
    } else {
        code_item("123105", "DCM", "Histogram Analysis")
    }
}

fn seq(items: Vec<InMemDicomObject>) -> DataSetSequence<InMemDicomObject> {
    DataSetSequence::from(items)
}

/// Builds the Surface Segmentation of `structures` (see the module docs). `req` gives the
/// series (the SEG series), instance UID and number, equipment and description; its
/// payload is not used.
pub(super) fn build_surface_segmentation(
    src: &SourceSeries,
    req: &EncapRequest<'_>,
    structures: &[StructureMesh<'_>],
) -> Result<FileDicomObject<InMemDicomObject>, EncapError> {
    if structures.is_empty() {
        return Err(EncapError::NoStructures);
    }
    let mut base = Base::new(src, req, "SEG", true)?;
    let own = &base.own;
    let obj = &mut base.obj;

    // ---- Surface Segmentation module: Content Identification macro
    put_str(obj, tags::CONTENT_LABEL, VR::CS, "SURFACES");
    let labels: Vec<&str> = structures.iter().map(|s| s.label).collect();
    let description = clean_line(&format!("Surfaces: {}", labels.join(", ")), LO_MAX);
    own.put(obj, tags::CONTENT_DESCRIPTION, VR::LO, &description);
    obj.put(DataElement::empty(tags::CONTENT_CREATOR_NAME, VR::PN));

    let version = env!("CARGO_PKG_VERSION");
    let mut segments = Vec::with_capacity(structures.len());
    let mut surfaces = Vec::with_capacity(structures.len());
    for (i, s) in structures.iter().enumerate() {
        let number = u32::try_from(i + 1).map_err(|_| EncapError::TooManyStructures(i + 1))?;
        let segment_number =
            u16::try_from(i + 1).map_err(|_| EncapError::TooManyStructures(i + 1))?;
        let label = clean_line(s.label, LO_MAX);
        let algorithm = clean_line(s.algorithm, LO_MAX);
        let algorithm = if algorithm.is_empty() {
            "m3dnode".to_string()
        } else {
            algorithm
        };

        // ---- Segment Sequence item
        let mut seg = InMemDicomObject::new_empty();
        seg.put(DataElement::new(
            tags::SEGMENT_NUMBER,
            VR::US,
            PrimitiveValue::from(segment_number),
        ));
        if label.is_empty() {
            put_str(
                &mut seg,
                tags::SEGMENT_LABEL,
                VR::LO,
                &format!("Surface {number}"),
            );
        } else {
            own.put(&mut seg, tags::SEGMENT_LABEL, VR::LO, &label);
        }
        let seg_description = clean_line(s.description, LO_MAX);
        if !seg_description.is_empty() {
            own.put(
                &mut seg,
                tags::SEGMENT_DESCRIPTION,
                VR::ST,
                &seg_description,
            );
        }
        // The algorithm's name goes in the generation algorithm identification below:
        // Segment Algorithm Name (0062,0009) belongs to the (image) Segmentation IOD's
        // Segment Sequence, not to the Surface Segmentation module's.
        put_str(&mut seg, tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC");
        let (category, kind) = property_codes(s.label);
        seg.put(DataElement::new(
            tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
            VR::SQ,
            seq(vec![category]),
        ));
        seg.put(DataElement::new(
            tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
            VR::SQ,
            seq(vec![kind]),
        ));
        seg.put(DataElement::new(
            tags::SURFACE_COUNT,
            VR::UL,
            PrimitiveValue::from(1u32),
        ));
        let mut alg = InMemDicomObject::new_empty();
        alg.put(DataElement::new(
            tags::ALGORITHM_FAMILY_CODE_SEQUENCE,
            VR::SQ,
            seq(vec![algorithm_family(s.algorithm)]),
        ));
        own.put(&mut alg, tags::ALGORITHM_NAME, VR::LO, &algorithm);
        put_str(&mut alg, tags::ALGORITHM_VERSION, VR::LO, version);
        let mut refsurf = InMemDicomObject::new_empty();
        refsurf.put(DataElement::new(
            tags::REFERENCED_SURFACE_NUMBER,
            VR::UL,
            PrimitiveValue::from(number),
        ));
        refsurf.put(DataElement::new(
            tags::SEGMENT_SURFACE_GENERATION_ALGORITHM_IDENTIFICATION_SEQUENCE,
            VR::SQ,
            seq(vec![alg]),
        ));
        refsurf.put(DataElement::new(
            tags::SEGMENT_SURFACE_SOURCE_INSTANCE_SEQUENCE,
            VR::SQ,
            seq(source_references(src)),
        ));
        seg.put(DataElement::new(
            tags::REFERENCED_SURFACE_SEQUENCE,
            VR::SQ,
            seq(vec![refsurf]),
        ));
        segments.push(seg);

        // ---- Surface Sequence item
        surfaces.push(surface_item(s, number)?);
    }
    obj.put(DataElement::new(
        tags::SEGMENT_SEQUENCE,
        VR::SQ,
        seq(segments),
    ));

    // ---- Surface Mesh module
    let count = u32::try_from(structures.len())
        .map_err(|_| EncapError::TooManyStructures(structures.len()))?;
    obj.put(DataElement::new(
        tags::NUMBER_OF_SURFACES,
        VR::UL,
        PrimitiveValue::from(count),
    ));
    obj.put(DataElement::new(
        tags::SURFACE_SEQUENCE,
        VR::SQ,
        seq(surfaces),
    ));

    // ---- Common Instance Reference module
    put_common_instance_reference(obj, src);
    tracing::debug!(
        sop_instance_uid = %base.sop_uid,
        series_instance_uid = %base.series_uid,
        surfaces = structures.len(),
        "built Surface Segmentation object"
    );
    base.finish(SURFACE_SEGMENTATION_STORAGE)
}

/// One Surface Sequence item: presentation, topology flags, points, normals, triangles.
fn surface_item(s: &StructureMesh<'_>, number: u32) -> Result<InMemDicomObject, EncapError> {
    let mesh = s.mesh;
    let n_points =
        u32::try_from(mesh.vertices.len()).map_err(|_| EncapError::MeshTooLarge(s.label.into()))?;
    let triangles: Vec<[u32; 3]> = mesh.valid_triangles().collect();
    if n_points == 0 || triangles.is_empty() {
        return Err(EncapError::EmptyMesh(s.label.to_string()));
    }
    // OF/OL values are limited to 2^32 - 2 bytes.
    if mesh.vertices.len() * 12 >= (u32::MAX - 1) as usize
        || triangles.len() * 12 >= (u32::MAX - 1) as usize
    {
        return Err(EncapError::MeshTooLarge(s.label.to_string()));
    }
    let mut item = InMemDicomObject::new_empty();
    item.put(DataElement::new(
        tags::SURFACE_NUMBER,
        VR::UL,
        PrimitiveValue::from(number),
    ));
    // Type 2: the pipeline's smoothing and simplification are described in the comment,
    // not as a processing ratio, so "unknown" (empty).
    item.put(DataElement::empty(tags::SURFACE_PROCESSING, VR::CS));
    let grey = s.colour.to_dicom()[0];
    item.put(DataElement::new(
        tags::RECOMMENDED_DISPLAY_GRAYSCALE_VALUE,
        VR::US,
        PrimitiveValue::from(grey),
    ));
    item.put(DataElement::new(
        tags::RECOMMENDED_DISPLAY_CIE_LAB_VALUE,
        VR::US,
        PrimitiveValue::U16(s.colour.to_dicom().to_vec().into()),
    ));
    let opacity = if s.opacity.is_finite() {
        s.opacity.clamp(0.0, 1.0)
    } else {
        1.0
    };
    item.put(DataElement::new(
        tags::RECOMMENDED_PRESENTATION_OPACITY,
        VR::FL,
        PrimitiveValue::from(opacity),
    ));
    put_str(
        &mut item,
        tags::RECOMMENDED_PRESENTATION_TYPE,
        VR::CS,
        "SURFACE",
    );
    let m = s.metrics;
    let yes_no = |b: bool| if b { "YES" } else { "NO" };
    put_str(
        &mut item,
        tags::FINITE_VOLUME,
        VR::CS,
        yes_no(m.watertight && m.consistently_oriented),
    );
    put_str(&mut item, tags::MANIFOLD, VR::CS, yes_no(m.manifold));

    // Points (Points macro)
    let mut points = InMemDicomObject::new_empty();
    points.put(DataElement::new(
        tags::NUMBER_OF_SURFACE_POINTS,
        VR::UL,
        PrimitiveValue::from(n_points),
    ));
    let coords: Vec<f32> = mesh.vertices.iter().flatten().copied().collect();
    points.put(DataElement::new(
        tags::POINT_COORDINATES_DATA,
        VR::OF,
        PrimitiveValue::F32(coords.into()),
    ));
    item.put(DataElement::new(
        tags::SURFACE_POINTS_SEQUENCE,
        VR::SQ,
        seq(vec![points]),
    ));

    // Normals (Vectors macro)
    let normals = crate::mesh::vertex_normals(mesh);
    let mut vectors = InMemDicomObject::new_empty();
    vectors.put(DataElement::new(
        tags::NUMBER_OF_VECTORS,
        VR::UL,
        PrimitiveValue::from(n_points),
    ));
    vectors.put(DataElement::new(
        tags::VECTOR_DIMENSIONALITY,
        VR::US,
        PrimitiveValue::from(3u16),
    ));
    let nv: Vec<f32> = normals.iter().flatten().copied().collect();
    vectors.put(DataElement::new(
        tags::VECTOR_COORDINATE_DATA,
        VR::OF,
        PrimitiveValue::F32(nv.into()),
    ));
    item.put(DataElement::new(
        tags::SURFACE_POINTS_NORMALS_SEQUENCE,
        VR::SQ,
        seq(vec![vectors]),
    ));

    // Triangles (Surface Mesh Primitives macro), 1-based; the other primitives are type 2.
    let mut prim = InMemDicomObject::new_empty();
    let idx: Vec<u32> = triangles.iter().flatten().map(|&i| i + 1).collect();
    prim.put(DataElement::new(
        tags::LONG_TRIANGLE_POINT_INDEX_LIST,
        VR::OL,
        PrimitiveValue::U32(idx.into()),
    ));
    prim.put(DataElement::empty(
        tags::LONG_VERTEX_POINT_INDEX_LIST,
        VR::OL,
    ));
    prim.put(DataElement::empty(tags::LONG_EDGE_POINT_INDEX_LIST, VR::OL));
    for tag in [
        tags::TRIANGLE_STRIP_SEQUENCE,
        tags::TRIANGLE_FAN_SEQUENCE,
        tags::LINE_SEQUENCE,
        tags::FACET_SEQUENCE,
    ] {
        prim.put(DataElement::empty(tag, VR::SQ));
    }
    item.put(DataElement::new(
        tags::SURFACE_MESH_PRIMITIVES_SEQUENCE,
        VR::SQ,
        seq(vec![prim]),
    ));
    Ok(item)
}
