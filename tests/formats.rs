//! Issue 15 items 2 and 3: the same meshes (bone and skin of a real CT head) as Encapsulated
//! STL, Encapsulated OBJ + MTL and Surface Segmentation; every object checked by dciodvfy
//! and dcentvfy, and read back (STL and OBJ by m3dnode's parsers, the Surface Segmentation
//! by pydicom) to the mesh it was made from.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_dciodvfy_clean, python, run, testdata, text, tool};
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};
use m3dnode::encap::{self, BuiltObject, Cielab, Format, ObjectKind, ResultIds, StructureMesh};
use m3dnode::mesh::{self, Mesh, MeshMetrics};
use m3dnode::recon::iso::{self, IsoOptions, Preset};
use m3dnode::volume::{self, AssembleOptions, Volume};

fn ct_files() -> Vec<PathBuf> {
    let dir = testdata().join("series/ct_head_axial_small");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
        .collect();
    files.sort();
    files
}

struct Surfaces {
    vol: Volume,
    files: Vec<PathBuf>,
    parts: Vec<(String, String, Mesh, MeshMetrics, Cielab, f32)>,
}

/// The CT head reconstructed at the bone and skin presets, as the node does.
fn ct_head() -> Surfaces {
    let files = ct_files();
    let vol = volume::assemble(&files, &AssembleOptions::default()).unwrap();
    let mut parts = Vec::new();
    for (label, preset, colour, opacity) in [
        ("Bone", Preset::CtBone, "#e3dac9", 1.0f32),
        ("Skin", Preset::CtSkin, "#f1c27d", 0.5),
    ] {
        let r = iso::reconstruct(
            &vol,
            &IsoOptions {
                preset,
                ..Default::default()
            },
            &mut |_| {},
        )
        .unwrap();
        parts.push((
            label.to_string(),
            r.description,
            r.mesh,
            r.metrics,
            colour.parse().unwrap(),
            opacity,
        ));
    }
    Surfaces { vol, files, parts }
}

impl Surfaces {
    fn structures(&self) -> Vec<StructureMesh<'_>> {
        self.parts
            .iter()
            .map(
                |(label, description, mesh, metrics, colour, opacity)| StructureMesh {
                    label,
                    description,
                    colour: *colour,
                    opacity: *opacity,
                    mesh,
                    metrics,
                    comment: format!("triangles={}", metrics.triangles),
                    algorithm: "m3dnode iso threshold",
                },
            )
            .collect()
    }
}

fn ids() -> ResultIds {
    ResultIds {
        series_instance_uid: Some("2.25.1111".into()),
        sop_instance_uid: Some("2.25.2222".into()),
        instance_number: 3,
    }
}

fn get(obj: &InMemDicomObject, tag: Tag) -> String {
    common::text_of(obj, tag)
}

fn write(dir: &Path, b: &BuiltObject) -> PathBuf {
    let name = format!(
        "{:?}-{}.dcm",
        b.kind,
        b.structure.map_or("all".to_string(), |s| s.to_string())
    );
    let path = dir.join(name);
    b.object.write_to_file(&path).unwrap();
    path
}

/// dciodvfy (Debian's 2022 dicom3tools) does not know the Encapsulated OBJ and MTL IODs
/// (Supplement 208 came after it): it refuses their SOP classes. What it can check — every
/// module they share with the Encapsulated STL IOD — is checked on a copy relabelled as
/// STL, without the attributes it predates (Model Group UID, Referenced Instance Sequence
/// with its relative URI, the colour and opacity), and with the STL IOD's Frame of
/// Reference for the MTL (the MTL IOD has none). What is particular to OBJ/MTL is checked
/// by the caller. dcentvfy does not know them either, so it is given these copies. Returns
/// the copy's path.
fn assert_clean_as_stl(b: &BuiltObject, dir: &Path, frame_uid: &str) -> PathBuf {
    let mut copy: FileDicomObject<InMemDicomObject> = b.object.clone();
    for tag in [
        tags::MODEL_GROUP_UID,
        tags::REFERENCED_INSTANCE_SEQUENCE,
        tags::RECOMMENDED_DISPLAY_CIE_LAB_VALUE,
        tags::RECOMMENDED_PRESENTATION_OPACITY,
    ] {
        copy.remove_element(tag);
    }
    copy.put(dicom_core::DataElement::new(
        tags::SOP_CLASS_UID,
        dicom_core::VR::UI,
        dicom_core::PrimitiveValue::from(encap::ENCAPSULATED_STL_STORAGE),
    ));
    copy.put(dicom_core::DataElement::new(
        tags::MIME_TYPE_OF_ENCAPSULATED_DOCUMENT,
        dicom_core::VR::LO,
        dicom_core::PrimitiveValue::from("model/stl"),
    ));
    if copy.get(tags::FRAME_OF_REFERENCE_UID).is_none() {
        copy.put(dicom_core::DataElement::new(
            tags::FRAME_OF_REFERENCE_UID,
            dicom_core::VR::UI,
            dicom_core::PrimitiveValue::from(frame_uid),
        ));
        copy.put(dicom_core::DataElement::empty(
            tags::POSITION_REFERENCE_INDICATOR,
            dicom_core::VR::LO,
        ));
    }
    copy.meta_mut().media_storage_sop_class_uid = encap::ENCAPSULATED_STL_STORAGE.to_string();
    let path = dir.join(format!("as-stl-{}", b.sop_instance_uid));
    copy.write_to_file(&path).unwrap();
    assert_dciodvfy_clean(&path);
    path
}

#[test]
fn every_format_validates_and_reads_back() {
    let s = ct_head();
    let structures = s.structures();
    let built = encap::build_results(
        &s.vol,
        &structures,
        &[Format::SurfaceSeg, Format::Obj, Format::Stl, Format::Obj],
        &ids(),
    )
    .unwrap();
    let kinds: Vec<(ObjectKind, Option<usize>)> =
        built.iter().map(|b| (b.kind, b.structure)).collect();
    assert_eq!(
        kinds,
        [
            (ObjectKind::Stl, Some(0)),
            (ObjectKind::Stl, Some(1)),
            (ObjectKind::Obj, Some(0)),
            (ObjectKind::Mtl, Some(0)),
            (ObjectKind::Obj, Some(1)),
            (ObjectKind::Mtl, Some(1)),
            (ObjectKind::SurfaceSeg, None),
        ]
    );
    let tmp = tempfile::tempdir().unwrap();
    let frame_uid = s.vol.frame_of_reference_uid.clone().unwrap();
    let mut paths = Vec::new();
    let mut checked = Vec::new();
    for b in &built {
        let path = write(tmp.path(), b);
        match b.kind {
            ObjectKind::Stl | ObjectKind::SurfaceSeg => {
                assert_dciodvfy_clean(&path);
                checked.push(path.clone());
            }
            ObjectKind::Obj | ObjectKind::Mtl => {
                checked.push(assert_clean_as_stl(b, tmp.path(), &frame_uid));
            }
        }
        paths.push(path);
    }

    // dcentvfy: every object (OBJ and MTL as their STL-labelled copies) with the source
    // images: one consistent patient, study, series and frame of reference.
    let mut cmd = Command::new(tool("dcentvfy"));
    cmd.args(&s.files).args(&checked);
    let out = run(&mut cmd);
    let t = text(&out);
    let problems: Vec<&str> = t
        .lines()
        .filter(|l| l.contains("Error") || l.contains("Warning"))
        .collect();
    assert!(problems.is_empty(), "dcentvfy:\n{t}");

    // Identity: structure 0's STL keeps the given UID; all UIDs distinct and valid;
    // Instance Numbers distinct within each series.
    assert_eq!(built[0].sop_instance_uid, "2.25.2222");
    let uids: HashSet<&str> = built.iter().map(|b| b.sop_instance_uid.as_str()).collect();
    assert_eq!(uids.len(), built.len());
    let mut numbers = HashSet::new();
    for b in &built {
        assert!(m3dnode::store::uid::is_valid_uid(&b.sop_instance_uid));
        assert_eq!(get(&b.object, tags::SOP_INSTANCE_UID), b.sop_instance_uid);
        assert_eq!(get(&b.object, tags::SOP_CLASS_UID), b.sop_class_uid);
        let series = get(&b.object, tags::SERIES_INSTANCE_UID);
        assert!(numbers.insert((series, get(&b.object, tags::INSTANCE_NUMBER))));
        assert_eq!(
            get(&b.object, tags::STUDY_INSTANCE_UID),
            s.vol.study_instance_uid
        );
    }
    assert_eq!(get(&built[0].object, tags::INSTANCE_NUMBER), "3");

    // STL: read back equal.
    for b in built.iter().filter(|b| b.kind == ObjectKind::Stl) {
        let i = b.structure.unwrap();
        let back = mesh::read_stl(&encap::extract_stl(&b.object).unwrap()).unwrap();
        assert_same_mesh(&back, &s.parts[i].2);
        assert_eq!(get(&b.object, tags::SERIES_INSTANCE_UID), "2.25.1111");
        assert_eq!(get(&b.object, tags::DOCUMENT_TITLE), s.parts[i].1);
    }

    // OBJ + MTL: the OBJ reads back to the same mesh, names its MTL by the relative URI
    // its Referenced Instance Sequence resolves to the MTL object; one Model Group.
    let groups: HashSet<String> = built
        .iter()
        .filter(|b| matches!(b.kind, ObjectKind::Obj | ObjectKind::Mtl))
        .map(|b| get(&b.object, tags::MODEL_GROUP_UID))
        .collect();
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert!(m3dnode::store::uid::is_valid_uid(
        groups.iter().next().unwrap()
    ));
    for b in built.iter().filter(|b| b.kind == ObjectKind::Obj) {
        let i = b.structure.unwrap();
        let (label, description, m, _, colour, opacity) = &s.parts[i];
        check_obj_iod(&b.object, true);
        assert_eq!(get(&b.object, tags::DOCUMENT_TITLE), *description);
        let text = encap::extract_text_document(&b.object, "model/obj").unwrap();
        assert_same_mesh(&mesh::read_obj(&text).unwrap(), m);
        assert_eq!(text.matches("\nvn ").count(), m.vertices.len());
        let mtllib = text
            .lines()
            .find_map(|l| l.strip_prefix("mtllib "))
            .expect("mtllib");
        assert!(text.contains(&format!("\nusemtl {label}\n")), "usemtl");
        let item = &b
            .object
            .get(tags::REFERENCED_INSTANCE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0];
        assert_eq!(
            get(
                item,
                tags::RELATIVE_URI_REFERENCE_WITHIN_ENCAPSULATED_DOCUMENT
            ),
            mtllib
        );
        assert_eq!(
            get(item, tags::REFERENCED_SOP_CLASS_UID),
            encap::ENCAPSULATED_MTL_STORAGE
        );
        let mtl = built
            .iter()
            .find(|m| m.sop_instance_uid == get(item, tags::REFERENCED_SOP_INSTANCE_UID))
            .expect("the referenced MTL is in the result");
        assert_eq!((mtl.kind, mtl.structure), (ObjectKind::Mtl, Some(i)));
        check_obj_iod(&mtl.object, false);
        let mtl_text = encap::extract_text_document(&mtl.object, "model/mtl").unwrap();
        assert!(
            mtl_text.contains(&format!("newmtl {label}\n")),
            "{mtl_text}"
        );
        let kd: Vec<f32> = mtl_text
            .lines()
            .find_map(|l| l.strip_prefix("Kd "))
            .unwrap()
            .split(' ')
            .map(|x| x.parse().unwrap())
            .collect();
        let rgb = colour.to_srgb();
        for k in 0..3 {
            assert!(
                (kd[k] * 255.0 - f32::from(rgb[k])).abs() < 0.01,
                "{kd:?} {rgb:?}"
            );
        }
        assert!(mtl_text.contains(&format!("\nd {opacity}\n")), "{mtl_text}");
    }

    // Surface Segmentation: read by pydicom, same points, normals, triangles, labels and
    // colours.
    let seg = built
        .iter()
        .find(|b| b.kind == ObjectKind::SurfaceSeg)
        .unwrap();
    let seg_path = &paths[built.len() - 1];
    assert_eq!(get(&seg.object, tags::MODALITY), "SEG");
    assert_eq!(get(&seg.object, tags::SERIES_NUMBER), "9902");
    assert_ne!(get(&seg.object, tags::SERIES_INSTANCE_UID), "2.25.1111");
    assert_eq!(
        Some(get(&seg.object, tags::FRAME_OF_REFERENCE_UID)),
        s.vol.frame_of_reference_uid
    );
    check_seg_with_pydicom(seg_path, &s);
}

/// The same vertices (bit for bit: f32 written and read back) and the same triangles.
fn assert_same_mesh(back: &Mesh, want: &Mesh) {
    assert_eq!(back.triangle_count(), want.triangle_count());
    // STL welds by position, so vertex order may differ: compare triangle corners.
    let corners = |m: &Mesh| -> Vec<[u32; 9]> {
        m.valid_triangles()
            .map(|t| {
                let mut c = [0u32; 9];
                for (k, &i) in t.iter().enumerate() {
                    for d in 0..3 {
                        c[3 * k + d] = m.vertices[i as usize][d].to_bits();
                    }
                }
                c
            })
            .collect()
    };
    assert_eq!(corners(back), corners(want));
}

/// What the Encapsulated OBJ (A.85.2) / MTL (A.85.3) IODs need that the STL-relabelled
/// dciodvfy run cannot see.
fn check_obj_iod(obj: &FileDicomObject<InMemDicomObject>, is_obj: bool) {
    let (class, mime) = if is_obj {
        (encap::ENCAPSULATED_OBJ_STORAGE, "model/obj")
    } else {
        (encap::ENCAPSULATED_MTL_STORAGE, "model/mtl")
    };
    assert_eq!(get(obj, tags::SOP_CLASS_UID), class);
    assert_eq!(
        obj.meta()
            .media_storage_sop_class_uid
            .trim_end_matches('\0'),
        class
    );
    assert_eq!(get(obj, tags::MIME_TYPE_OF_ENCAPSULATED_DOCUMENT), mime);
    assert_eq!(get(obj, tags::MODALITY), "M3D");
    for tag in [
        tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
        tags::ENCAPSULATED_DOCUMENT,
        tags::ENCAPSULATED_DOCUMENT_LENGTH,
        tags::SOURCE_INSTANCE_SEQUENCE,
        tags::REFERENCED_SERIES_SEQUENCE,
        tags::MODEL_GROUP_UID,
    ] {
        assert!(obj.get(tag).is_some(), "{tag} missing from {mime}");
    }
    assert_eq!(obj.get(tags::FRAME_OF_REFERENCE_UID).is_some(), is_obj);
    if is_obj {
        assert_eq!(
            obj.get(tags::RECOMMENDED_DISPLAY_CIE_LAB_VALUE)
                .unwrap()
                .to_multi_int::<u16>()
                .unwrap()
                .len(),
            3
        );
    }
}

fn check_seg_with_pydicom(path: &Path, s: &Surfaces) {
    let script = r#"
import json, sys
import numpy as np
import pydicom
ds = pydicom.dcmread(sys.argv[1])
out = {"segments": [], "surfaces": []}
for seg in ds.SegmentSequence:
    out["segments"].append({
        "number": int(seg.SegmentNumber), "label": str(seg.SegmentLabel),
        "type": str(seg.SegmentedPropertyTypeCodeSequence[0].CodeValue),
        "category": str(seg.SegmentedPropertyCategoryCodeSequence[0].CodeValue),
        "surface": int(seg.ReferencedSurfaceSequence[0].ReferencedSurfaceNumber),
        "sources": len(seg.ReferencedSurfaceSequence[0].SegmentSurfaceSourceInstanceSequence),
    })
for surf in ds.SurfaceSequence:
    pts = np.frombuffer(surf.SurfacePointsSequence[0].PointCoordinatesData, dtype="<f4")
    nrm = np.frombuffer(surf.SurfacePointsNormalsSequence[0].VectorCoordinateData, dtype="<f4")
    tri = np.frombuffer(surf.SurfaceMeshPrimitivesSequence[0].LongTrianglePointIndexList, dtype="<u4")
    out["surfaces"].append({
        "number": int(surf.SurfaceNumber),
        "npoints": int(surf.SurfacePointsSequence[0].NumberOfSurfacePoints),
        "points": pts.tolist(), "normals": nrm.tolist(), "triangles": tri.tolist(),
        "lab": [int(x) for x in surf.RecommendedDisplayCIELabValue],
        "opacity": float(surf.RecommendedPresentationOpacity),
        "finite": str(surf.FiniteVolume), "manifold": str(surf.Manifold),
    })
json.dump(out, sys.stdout)
"#;
    let out = run(Command::new(python()).arg("-c").arg(script).arg(path));
    assert!(out.status.success(), "pydicom:\n{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let segments = v["segments"].as_array().unwrap();
    let surfaces = v["surfaces"].as_array().unwrap();
    assert_eq!(segments.len(), s.parts.len());
    assert_eq!(surfaces.len(), s.parts.len());
    let sources = s.vol.sources.len() as u64;
    for (i, (label, _, m, metrics, colour, opacity)) in s.parts.iter().enumerate() {
        let seg = &segments[i];
        assert_eq!(seg["number"], i as u64 + 1);
        assert_eq!(seg["label"], label.as_str());
        assert_eq!(seg["category"], "85756007");
        assert_eq!(seg["type"], if i == 0 { "3138006" } else { "39937001" });
        assert_eq!(seg["surface"], i as u64 + 1);
        assert_eq!(seg["sources"], sources);
        let surf = &surfaces[i];
        assert_eq!(surf["number"], i as u64 + 1);
        assert_eq!(surf["npoints"], m.vertices.len() as u64);
        let points: Vec<f32> = floats(&surf["points"]);
        let want: Vec<f32> = m.vertices.iter().flatten().copied().collect();
        assert_eq!(points, want, "points of {label}");
        let normals = floats(&surf["normals"]);
        let want_n: Vec<f32> = mesh::vertex_normals(m).into_iter().flatten().collect();
        assert_eq!(normals, want_n, "normals of {label}");
        let tris: Vec<u32> = surf["triangles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let want_t: Vec<u32> = m.valid_triangles().flatten().map(|i| i + 1).collect();
        assert_eq!(tris, want_t, "1-based triangles of {label}");
        let lab: Vec<u16> = surf["lab"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u16)
            .collect();
        assert_eq!(lab, colour.to_dicom());
        assert_eq!(
            Cielab::from_dicom([lab[0], lab[1], lab[2]]).to_srgb(),
            colour.to_srgb()
        );
        assert!((surf["opacity"].as_f64().unwrap() - f64::from(*opacity)).abs() < 1e-6);
        let yes = |b: bool| if b { "YES" } else { "NO" };
        assert_eq!(surf["manifold"], yes(metrics.manifold));
        assert_eq!(
            surf["finite"],
            yes(metrics.watertight && metrics.consistently_oriented)
        );
    }
}

/// JSON numbers (doubles from float32) back to f32: exact, since f32 -> f64 is exact.
fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn uids_are_deterministic_and_numbers_grow_with_the_version() {
    let s = ct_head();
    let structures = s.structures();
    let all = [Format::Stl, Format::Obj, Format::SurfaceSeg];
    let a = encap::build_results(&s.vol, &structures, &all, &ids()).unwrap();
    let b = encap::build_results(&s.vol, &structures, &all, &ids()).unwrap();
    let uids = |r: &[BuiltObject]| -> Vec<String> {
        r.iter().map(|o| o.sop_instance_uid.clone()).collect()
    };
    assert_eq!(uids(&a), uids(&b), "a re-run makes the same instances");
    let series = |r: &[BuiltObject]| -> Vec<String> {
        r.iter()
            .map(|o| get(&o.object, tags::SERIES_INSTANCE_UID))
            .collect()
    };
    assert_eq!(series(&a), series(&b));
    let next = ResultIds {
        instance_number: 4,
        ..ids()
    };
    let c = encap::build_results(&s.vol, &structures, &all, &next).unwrap();
    for (old, new) in a.iter().zip(&c) {
        let n = |o: &BuiltObject| -> i64 { get(&o.object, tags::INSTANCE_NUMBER).parse().unwrap() };
        assert!(n(new) > n(old), "{:?} {} -> {}", old.kind, n(old), n(new));
    }
    // Without ids, new UIDs every time.
    let d =
        encap::build_results(&s.vol, &structures, &[Format::Stl], &ResultIds::default()).unwrap();
    let e =
        encap::build_results(&s.vol, &structures, &[Format::Stl], &ResultIds::default()).unwrap();
    assert_ne!(uids(&d), uids(&e));
    // No structures, or a version beyond the numbering: refused.
    assert!(encap::build_results(&s.vol, &[], &all, &ids()).is_err());
    let too_far = ResultIds {
        instance_number: 100_000,
        ..ids()
    };
    assert!(matches!(
        encap::build_results(&s.vol, &structures, &all, &too_far),
        Err(encap::EncapError::InstanceNumberOutOfRange(100_000))
    ));
}

#[test]
fn format_names_parse_and_display() {
    for (name, f) in [
        ("stl", Format::Stl),
        ("obj", Format::Obj),
        ("surface-seg", Format::SurfaceSeg),
    ] {
        assert_eq!(name.parse::<Format>().unwrap(), f);
        assert_eq!(f.to_string(), name);
    }
    let err = "ply".parse::<Format>().unwrap_err();
    assert!(err.contains("stl, obj, surface-seg"), "{err}");
    #[derive(serde::Deserialize)]
    struct Peer {
        formats: Vec<Format>,
    }
    let p: Peer = toml::from_str(r#"formats = ["stl", "surface-seg"]"#).unwrap();
    assert_eq!(p.formats, [Format::Stl, Format::SurfaceSeg]);
    assert!(toml::from_str::<Peer>(r#"formats = ["STL3"]"#).is_err());
}
