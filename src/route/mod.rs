//! Routing: which series go to which pipeline ([`Rule`]), and getting results to their
//! destinations ([`outbox`]).
//!
//! Rules are compiled once, at start-up (regular expressions, presets, destinations checked
//! against `[[peers]]`), so a mistake stops the node with the key named instead of failing a
//! job at night. The outbox never blocks the receiver: it runs on its own task and reads its
//! work from the index.

pub mod outbox;

use std::path::PathBuf;

use regex::Regex;
use serde::Deserialize;

use crate::encap::{Cielab, Format};
use crate::net::settings::{PeerConfig, find_peer};
use crate::recon::iso::Keep;
use crate::recon::iso::{IsoOptions, Preset};
use crate::recon::mvdiffusion::{KeySlice, RunOptions, Windowing};
use crate::recon::neus::NeusProfile;
use crate::store::header::Header;
use crate::volume::{AssembleOptions, GapPolicy, MixedPolicy, TiltPolicy};

/// `[[rules]]`: which series go to which pipeline and where the result goes. Unset match
/// keys match anything. Enumerated values are checked by serde when the file is read; the
/// rest (regular expression, destinations, model directory) by [`Rule::compile`].
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    /// Name for logs and the job list (default `rule N`).
    pub name: Option<String>,
    /// Match: calling AE title (exact).
    pub calling_ae: Option<String>,
    /// Match: called AE title (exact).
    pub called_ae: Option<String>,
    /// Match: Modality (exact, e.g. `CT`).
    pub modality: Option<String>,
    /// Match: Body Part Examined (exact, case-insensitive).
    pub body_part: Option<String>,
    /// Match: Series Description (regular expression, unanchored).
    pub series_description: Option<String>,
    /// Match: SOP Class UID (exact).
    pub sop_class: Option<String>,
    /// Pipeline: `iso` (default) or `mvdiffusion` (six generated views + NeuS).
    pub pipeline: Pipeline,
    /// mvdiffusion: the model directory (holding `model.toml`); default `models/wonder3d`.
    pub model: Option<PathBuf>,
    /// mvdiffusion: the key image: `middle` (default), `largest` (most foreground) or an
    /// Instance Number.
    pub key_image: Option<String>,
    /// mvdiffusion: windowing of the key image: `series` (default: its Window Center/Width),
    /// `auto`, `ct-bone`, `ct-soft`, `ct-lung`, `ct-brain` or `CENTER,WIDTH`.
    pub window: Option<String>,
    /// mvdiffusion: denoising steps (default: the model's, 50 for Wonder3D).
    pub diffusion_steps: Option<usize>,
    /// mvdiffusion: NeuS profile overriding `[neus] profile`: `default` (the config's 3000
    /// steps, for a GPU) or `fast` (the CPU profile).
    pub neus_profile: Option<NeusProfile>,
    /// mvdiffusion: NeuS optimisation steps, overriding the profile's.
    pub neus_steps: Option<usize>,
    /// Preset of the iso pipeline (`ct-bone`, `ct-skin`, `mr-head`, `otsu`, `mask` or a
    /// number); default `ct-bone` for CT, `mr-head` otherwise. The short form of one
    /// structure with the preset's label, colour and keep policy; `structures` is the long one.
    pub preset: Option<Preset>,
    /// `[[rules.structures]]`: the surfaces of the iso pipeline, each its own mesh in the
    /// result (e.g. bone and skin of a CT head). Excludes `preset`.
    pub structures: Vec<StructureConfig>,
    /// Gaussian pre-smoothing in mm.
    pub smooth_sigma_mm: Option<f64>,
    /// Missing slices: `fail` (default) or `interpolate`.
    pub gaps: GapPolicy,
    /// Several stacks: `fail` (default) or `largest`.
    pub mixed: MixedPolicy,
    /// Gantry tilt: `reject` (default) or `resample`.
    pub tilt: TiltPolicy,
    /// Overrides `[series] quiet_seconds` for series of this rule.
    pub quiet_seconds: Option<f64>,
    /// Complete the series as soon as this many instances have arrived.
    pub expected_instances: Option<u32>,
    /// A series whose MPPS step was DISCONTINUED: `process` (default) what arrived at once,
    /// or `skip` it (state `skipped`, never processed).
    pub on_discontinued: OnDiscontinued,
    /// Destinations: AE titles from `[[peers]]`.
    pub send_to: Vec<String>,
    /// Also send the result to the AE that sent the series (it must be in `[[peers]]`).
    pub reply_to_sender: bool,
}

/// `[[rules.structures]]`: one surface of a result.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StructureConfig {
    /// What to segment (as `[[rules]] preset`).
    pub preset: Preset,
    /// Segment label and file name part, e.g. `Bone`; default from the preset.
    pub label: Option<String>,
    /// Recommended display colour, `"#rrggbb"` or CIELab `[L, a, b]`; default from the preset.
    pub color: Option<Cielab>,
    /// Recommended opacity, 0 to 1; default 1, or 0.4 for skin beside other structures
    /// (so that what is under it shows).
    pub opacity: Option<f32>,
    /// Which connected pieces to keep: `largest`, `all` or `inside-body`; default from the
    /// preset (`inside-body` for bone, `largest` otherwise).
    pub keep: Option<Keep>,
    /// Pieces enclosing less than this many mm³ are dropped.
    pub min_size_mm3: Option<f64>,
}

/// One compiled structure of a rule.
#[derive(Debug, Clone)]
pub struct Structure {
    /// Segment label, unique within the rule.
    pub label: String,
    /// Recommended display colour.
    pub colour: Cielab,
    /// Recommended opacity, 0 to 1.
    pub opacity: f32,
    /// How to make its surface.
    pub iso: IsoOptions,
}

/// A destination of a rule's results, with the formats it is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    /// AE title.
    pub ae_title: String,
    /// `host:port`.
    pub address: String,
    /// The mesh objects it gets (`[[peers]] formats`).
    pub formats: Vec<Format>,
}

impl Destination {
    fn of(peer: &PeerConfig) -> Destination {
        Destination {
            ae_title: peer.ae_title.clone(),
            address: peer.address.clone(),
            formats: peer.formats.clone(),
        }
    }
}

/// A reconstruction pipeline (`[[rules]] pipeline`, `m3dnode recon --pipeline`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(try_from = "String")]
pub enum Pipeline {
    /// Threshold segmentation and marching cubes ([`crate::recon::iso`]).
    #[default]
    Iso,
    /// Six generated views and a NeuS fit ([`crate::recon::multiview`]).
    Mvdiffusion,
}

crate::choice!(Pipeline);

/// What a DISCONTINUED MPPS step does to the series it lists (`[[rules]] on_discontinued`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(try_from = "String")]
pub enum OnDiscontinued {
    /// Process what arrived, at once: a partial acquisition may still be worth a result.
    #[default]
    Process,
    /// Do not process it: the series is marked `skipped` and its later instances are only
    /// stored.
    Skip,
}

crate::choice!(OnDiscontinued);

/// A compiled `[[rules]]` entry.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Name for logs and the job list.
    pub name: String,
    config: RuleConfig,
    description: Option<Regex>,
    /// The surfaces of the `iso` pipeline, in order (at least one).
    pub structures: Vec<Structure>,
    /// Set when the rule's pipeline is `mvdiffusion`; the iso settings are then unused.
    pub mvdiffusion: Option<MvDiffusionRule>,
    /// Assembly policies.
    pub assemble: AssembleOptions,
    /// Destinations from `send_to`.
    pub destinations: Vec<Destination>,
}

/// Two rules are equal when compiled from the same text: everything else in them follows
/// from it and from `[[peers]]`, whose resolved addresses are compared too.
impl PartialEq for Rule {
    fn eq(&self, other: &Rule) -> bool {
        self.name == other.name
            && self.config == other.config
            && self.destinations == other.destinations
    }
}

/// The `mvdiffusion` settings of a rule. The model itself is validated and loaded when the
/// first job needs it (ONNX Runtime is never loaded by a node that does not use it).
#[derive(Debug, Clone)]
pub struct MvDiffusionRule {
    /// Model directory (`model.toml` and the ONNX files).
    pub model: PathBuf,
    /// The diffusion run.
    pub run: RunOptions,
    /// NeuS profile overriding `[neus] profile`.
    pub neus_profile: Option<NeusProfile>,
    /// NeuS steps overriding the profile's.
    pub neus_steps: Option<usize>,
}

fn mvdiffusion_rule(rule: &RuleConfig) -> Result<MvDiffusionRule, (&'static str, String)> {
    let model = rule
        .model
        .clone()
        .unwrap_or_else(|| PathBuf::from("models/wonder3d"));
    if !model.join("model.toml").is_file() {
        return Err((
            "model",
            format!(
                "{} holds no model.toml (export the model first: models/README.md)",
                model.display()
            ),
        ));
    }
    let key = KeySlice::parse(rule.key_image.as_deref().unwrap_or("middle"))
        .map_err(|e| ("key_image", e))?;
    let windowing =
        Windowing::parse(rule.window.as_deref().unwrap_or("series")).map_err(|e| ("window", e))?;
    if rule
        .diffusion_steps
        .is_some_and(|n| !(1..=1000).contains(&n))
    {
        return Err(("diffusion_steps", "must be between 1 and 1000".into()));
    }
    if rule.neus_steps.is_some_and(|n| !(1..=100_000).contains(&n)) {
        return Err(("neus_steps", "must be between 1 and 100000".into()));
    }
    Ok(MvDiffusionRule {
        model,
        run: RunOptions {
            steps: rule.diffusion_steps,
            key,
            windowing,
            ..RunOptions::default()
        },
        neus_profile: rule.neus_profile,
        neus_steps: rule.neus_steps,
    })
}

/// What a series is matched on.
#[derive(Debug, Clone, Default)]
pub struct SeriesFacts {
    /// Calling AE of the association that brought the first instance.
    pub calling_ae: String,
    /// Called AE title.
    pub called_ae: String,
    /// Modality.
    pub modality: Option<String>,
    /// Body Part Examined.
    pub body_part: Option<String>,
    /// Series Description.
    pub series_description: Option<String>,
    /// SOP Class UID of the first instance.
    pub sop_class_uid: String,
}

impl SeriesFacts {
    /// Facts from the first instance of a series.
    pub fn from_header(h: &Header, calling_ae: &str, called_ae: &str) -> SeriesFacts {
        SeriesFacts {
            calling_ae: calling_ae.to_string(),
            called_ae: called_ae.to_string(),
            modality: h.modality.clone(),
            body_part: h.body_part_examined.clone(),
            series_description: h.series_description.clone(),
            sop_class_uid: h.sop_class_uid.clone(),
        }
    }
}

impl Rule {
    /// Compiles rule `index`, with `peers` to resolve its destinations; errors name the
    /// field and say what is wrong.
    pub fn compile(
        index: usize,
        rule: &RuleConfig,
        peers: &[PeerConfig],
    ) -> Result<Rule, (&'static str, String)> {
        let name = rule
            .name
            .clone()
            .unwrap_or_else(|| format!("rule {}", index + 1));
        let description = rule
            .series_description
            .as_deref()
            .map(Regex::new)
            .transpose()
            .map_err(|e| {
                (
                    "series_description",
                    format!("not a regular expression: {e}"),
                )
            })?;
        let mvdiffusion = match rule.pipeline {
            Pipeline::Iso => None,
            Pipeline::Mvdiffusion => Some(mvdiffusion_rule(rule)?),
        };
        let default_preset = if rule.modality.as_deref() == Some("CT") {
            Preset::CtBone
        } else {
            Preset::MrHead
        };
        if rule
            .smooth_sigma_mm
            .is_some_and(|s| !(0.0..=20.0).contains(&s))
        {
            return Err(("smooth_sigma_mm", "must be between 0 and 20 mm".into()));
        }
        let structures = compile_structures(rule, default_preset)?;
        let assemble = AssembleOptions {
            gaps: rule.gaps,
            mixed: rule.mixed,
            tilt: rule.tilt,
            ..Default::default()
        };
        if rule
            .quiet_seconds
            .is_some_and(|q| !(q >= 0.0 && q.is_finite()))
        {
            return Err(("quiet_seconds", "must be 0 or more seconds".into()));
        }
        let mut destinations = Vec::new();
        for ae in &rule.send_to {
            let peer =
                find_peer(peers, ae).ok_or(("send_to", format!("`{ae}` is not in [[peers]]")))?;
            destinations.push(Destination::of(peer));
        }
        if destinations.is_empty() && !rule.reply_to_sender {
            return Err((
                "send_to",
                "name at least one destination or set reply_to_sender = true".into(),
            ));
        }
        Ok(Rule {
            name,
            config: rule.clone(),
            description,
            structures,
            mvdiffusion,
            assemble,
            destinations,
        })
    }

    /// True when every match key that is set matches.
    pub fn matches(&self, f: &SeriesFacts) -> bool {
        let c = &self.config;
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| Some(w) == have)
        };
        eq(&c.calling_ae, Some(&f.calling_ae))
            && eq(&c.called_ae, Some(&f.called_ae))
            && eq(&c.modality, f.modality.as_deref())
            && eq(&c.sop_class, Some(&f.sop_class_uid))
            && c.body_part.as_deref().is_none_or(|w| {
                f.body_part
                    .as_deref()
                    .is_some_and(|h| h.eq_ignore_ascii_case(w))
            })
            && self.description.as_ref().is_none_or(|re| {
                f.series_description
                    .as_deref()
                    .is_some_and(|d| re.is_match(d))
            })
    }

    /// The rule as written.
    pub fn source(&self) -> &RuleConfig {
        &self.config
    }

    /// Quiet time for this rule's series; `default` is `[series] quiet_seconds`.
    pub fn quiet_seconds(&self, default: f64) -> f64 {
        self.config.quiet_seconds.unwrap_or(default)
    }

    /// Instance count that completes a series at once, if the rule says.
    pub fn expected_instances(&self) -> Option<u32> {
        self.config.expected_instances
    }

    /// What a DISCONTINUED MPPS step does to this rule's series.
    pub fn on_discontinued(&self) -> OnDiscontinued {
        self.config.on_discontinued
    }

    /// The destinations for a series sent by `calling_ae`.
    pub fn destinations_for(
        &self,
        calling_ae: &str,
        peers: &[PeerConfig],
    ) -> Result<Vec<Destination>, String> {
        let mut out = self.destinations.clone();
        if self.config.reply_to_sender {
            let peer = find_peer(peers, calling_ae).ok_or_else(|| {
                format!("reply_to_sender: the sender `{calling_ae}` is not in [[peers]], so its address is unknown")
            })?;
            if !out.iter().any(|d| d.ae_title == peer.ae_title) {
                out.push(Destination::of(peer));
            }
        }
        Ok(out)
    }
}

/// The structures of a rule: `[[rules.structures]]`, or the one of `preset` (else the
/// modality's default preset).
pub fn compile_structures(
    rule: &RuleConfig,
    default_preset: Preset,
) -> Result<Vec<Structure>, (&'static str, String)> {
    let written = if rule.structures.is_empty() {
        vec![StructureConfig {
            preset: rule.preset.unwrap_or(default_preset),
            label: None,
            color: None,
            opacity: None,
            keep: None,
            min_size_mm3: None,
        }]
    } else if rule.preset.is_some() {
        return Err((
            "preset",
            "set either preset or [[rules.structures]], not both".into(),
        ));
    } else if rule.pipeline == Pipeline::Mvdiffusion {
        return Err((
            "structures",
            "the mvdiffusion pipeline makes one surface; structures are for the iso pipeline"
                .into(),
        ));
    } else {
        rule.structures.clone()
    };
    if written.len() > MAX_STRUCTURES {
        return Err((
            "structures",
            format!("at most {MAX_STRUCTURES} structures per rule"),
        ));
    }
    let several = written.len() > 1;
    let mut out: Vec<Structure> = Vec::with_capacity(written.len());
    for s in written {
        let (label, rgb) = preset_look(s.preset);
        let label = s.label.clone().unwrap_or_else(|| label.to_string());
        let label = label.trim().to_string();
        if label.is_empty() || label.len() > 64 || label.chars().any(char::is_control) {
            return Err((
                "structures",
                format!("label `{label}` must be 1 to 64 printable characters"),
            ));
        }
        if out.iter().any(|o| o.label.eq_ignore_ascii_case(&label)) {
            return Err((
                "structures",
                format!(
                    "two structures are labelled `{label}`; labels name the meshes and must differ"
                ),
            ));
        }
        let opacity = s
            .opacity
            .unwrap_or(if several && s.preset == Preset::CtSkin {
                0.4
            } else {
                1.0
            });
        if !(0.0..=1.0).contains(&opacity) {
            return Err((
                "structures",
                format!("opacity of `{label}` must be between 0 and 1"),
            ));
        }
        if s.min_size_mm3.is_some_and(|m| !(m >= 0.0 && m.is_finite())) {
            return Err((
                "structures",
                format!("min_size_mm3 of `{label}` must be 0 or more"),
            ));
        }
        let mut iso = IsoOptions {
            preset: s.preset,
            smooth_sigma_mm: rule.smooth_sigma_mm,
            keep: s.keep,
            ..Default::default()
        };
        if let Some(m) = s.min_size_mm3 {
            iso.min_component_mm3 = m;
        }
        iso.threads = None;
        out.push(Structure {
            label,
            colour: s.color.unwrap_or_else(|| Cielab::from_srgb(rgb)),
            opacity,
            iso,
        });
    }
    Ok(out)
}

/// Structures a rule may ask for: each costs a marching cubes pass over the whole volume.
pub const MAX_STRUCTURES: usize = 8;

/// A preset's default label and colour (sRGB): 3D Slicer's bone and skin colours, which
/// planning software users know.
pub fn preset_look(preset: Preset) -> (&'static str, [u8; 3]) {
    match preset {
        Preset::CtBone => ("Bone", [241, 214, 145]),
        Preset::CtSkin => ("Skin", [177, 122, 101]),
        Preset::MrHead => ("Head", [177, 122, 101]),
        Preset::Mask => ("Mask", [128, 174, 128]),
        Preset::Otsu | Preset::Iso(_) => ("Surface", [216, 101, 79]),
    }
}

/// Compiles every rule; the error is the index of the rule, the field and what is wrong.
pub fn compile_rules(
    rules: &[RuleConfig],
    peers: &[PeerConfig],
) -> Result<Vec<Rule>, (usize, &'static str, String)> {
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| Rule::compile(i, r, peers).map_err(|(f, m)| (i, f, m)))
        .collect()
}

/// The first rule that matches.
pub fn first_match<'a>(rules: &'a [Rule], facts: &SeriesFacts) -> Option<&'a Rule> {
    rules.iter().find(|r| r.matches(facts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cfg(rules: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            format!("[[peers]]\nae_title = \"PACS\"\naddress = \"127.0.0.1:4242\"\n{rules}"),
        )
        .unwrap();
        Config::load(Some(&path), Some(Default::default()), &Default::default())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn first_match_wins_and_every_key_counts() {
        let c = cfg("[[rules]]\nname = \"ct head\"\nmodality = \"CT\"\nbody_part = \"head\"\nseries_description = \"(?i)bone\"\nsend_to = [\"PACS\"]\n\
                     [[rules]]\nname = \"any ct\"\nmodality = \"CT\"\npreset = \"ct-skin\"\nsend_to = [\"PACS\"]\n\
                     [[rules]]\nname = \"from scanner\"\ncalling_ae = \"MR1\"\nreply_to_sender = true\n")
        .unwrap();
        let rules: &[Rule] = c.compiled_rules();
        let mut f = SeriesFacts {
            calling_ae: "CT1".into(),
            called_ae: "M3DNODE".into(),
            modality: Some("CT".into()),
            body_part: Some("HEAD".into()),
            series_description: Some("Head BONE 1mm".into()),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
        };
        assert_eq!(first_match(rules, &f).unwrap().name, "ct head");
        f.series_description = Some("soft tissue".into());
        let r = first_match(rules, &f).unwrap();
        assert_eq!(r.name, "any ct");
        assert_eq!(r.structures[0].iso.preset, Preset::CtSkin);
        f.modality = Some("MR".into());
        assert!(first_match(rules, &f).is_none());
        f.calling_ae = "MR1".into();
        let r = first_match(rules, &f).unwrap();
        assert_eq!(r.structures[0].iso.preset, Preset::MrHead);
        assert!(
            r.destinations_for("MR1", &c.peers)
                .unwrap_err()
                .contains("not in [[peers]]")
        );
    }

    const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/models/tiny");

    #[test]
    fn mvdiffusion_rules_compile_without_loading_the_model() {
        let c = cfg(&format!(
            "[[rules]]\npipeline = \"mvdiffusion\"\nmodel = \"{TINY}\"\nkey_image = \"largest\"\nwindow = \"ct-bone\"\nneus_profile = \"fast\"\nneus_steps = 40\nsend_to = [\"PACS\"]\n"
        ))
        .unwrap();
        let rules: &[Rule] = c.compiled_rules();
        let mv = rules[0].mvdiffusion.as_ref().unwrap();
        assert_eq!(mv.run.key, KeySlice::LargestForeground);
        assert_eq!(mv.run.windowing, Windowing::preset("ct-bone").unwrap());
        assert_eq!(mv.neus_profile, Some(NeusProfile::Fast));
        assert_eq!(mv.neus_steps, Some(40));
    }

    #[test]
    fn structures_and_formats_compile_with_the_presets_looks() {
        let c = cfg("[[peers]]\nae_title = \"NAV\"\naddress = \"127.0.0.1:4243\"\nformats = [\"obj\", \"surface-seg\"]\n\
                     [[rules]]\nmodality = \"CT\"\nsend_to = [\"PACS\", \"NAV\"]\n\
                     [[rules.structures]]\npreset = \"ct-bone\"\n\
                     [[rules.structures]]\npreset = \"ct-skin\"\nkeep = \"all\"\nmin_size_mm3 = 5\n\
                     [[rules.structures]]\npreset = -500\nlabel = \"Airway\"\ncolor = \"#80c0ff\"\nopacity = 0.8\n")
        .unwrap();
        let r = &c.compiled_rules()[0];
        let labels: Vec<&str> = r.structures.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["Bone", "Skin", "Airway"]);
        assert_eq!(r.structures[0].opacity, 1.0);
        assert_eq!(
            r.structures[1].opacity, 0.4,
            "skin beside bone is see-through"
        );
        assert_eq!(r.structures[0].iso.keep, None, "the preset's default");
        assert_eq!(r.structures[1].iso.keep, Some(Keep::All));
        assert_eq!(r.structures[1].iso.min_component_mm3, 5.0);
        assert_eq!(r.structures[2].iso.preset, Preset::Iso(-500.0));
        assert_eq!(r.structures[2].colour.to_string(), "#80c0ff");
        let formats: Vec<Vec<Format>> = r.destinations.iter().map(|d| d.formats.clone()).collect();
        assert_eq!(
            formats,
            [vec![Format::Stl], vec![Format::Obj, Format::SurfaceSeg]]
        );
    }

    #[test]
    fn rule_errors_name_the_key() {
        for (rules, key) in [
            ("[[rules]]\nsend_to = [\"NOBODY\"]\n", "rules[0].send_to"),
            (
                "[[rules]]\nseries_description = \"(\"\nsend_to = [\"PACS\"]\n",
                "rules[0].series_description",
            ),
            (
                "[[rules]]\npreset = \"bones\"\nsend_to = [\"PACS\"]\n",
                "rules[0].preset",
            ),
            (
                "[[rules]]\npipeline = \"magic\"\nsend_to = [\"PACS\"]\n",
                "rules[0].pipeline",
            ),
            ("[[rules]]\nmodality = \"CT\"\n", "rules[0].send_to"),
            (
                "[[rules]]\npreset = \"ct-bone\"\nsend_to = [\"PACS\"]\n[[rules.structures]]\npreset = \"ct-skin\"\n",
                "rules[0].preset",
            ),
            (
                "[[rules]]\nsend_to = [\"PACS\"]\n[[rules.structures]]\npreset = \"ct-bone\"\n[[rules.structures]]\npreset = 200\nlabel = \"bone\"\n",
                "rules[0].structures",
            ),
            (
                "[[rules]]\nsend_to = [\"PACS\"]\n[[rules.structures]]\npreset = \"ct-skin\"\nopacity = 1.5\n",
                "rules[0].structures",
            ),
            (
                "[[rules]]\nsend_to = [\"PACS\"]\n[[rules.structures]]\npreset = \"ct-skin\"\nkeep = \"some\"\n",
                "keep",
            ),
            (
                "[[rules]]\nsend_to = [\"PACS\"]\n[[rules.structures]]\npreset = \"ct-skin\"\ncolor = \"red\"\n",
                "color",
            ),
            (
                &format!(
                    "[[rules]]\nsend_to = [\"PACS\"]\n{}",
                    (0..9)
                        .map(|i| format!("[[rules.structures]]\npreset = {i}\nlabel = \"s{i}\"\n"))
                        .collect::<String>()
                ),
                "rules[0].structures",
            ),
            (
                "[[peers]]\nae_title = \"NAV\"\naddress = \"nav:104\"\nformats = []\n",
                "peers[1].formats",
            ),
            (
                "[[peers]]\nae_title = \"NAV\"\naddress = \"nav:104\"\nformats = [\"ply\"]\n",
                "formats",
            ),
            (
                "[[rules]]\ngaps = \"maybe\"\nsend_to = [\"PACS\"]\n",
                "rules[0].gaps",
            ),
            (
                "[[rules]]\npipeline = \"mvdiffusion\"\nmodel = \"/nonexistent\"\nsend_to = [\"PACS\"]\n",
                "rules[0].model",
            ),
            (
                &format!(
                    "[[rules]]\npipeline = \"mvdiffusion\"\nmodel = \"{TINY}\"\nkey_image = \"first\"\nsend_to = [\"PACS\"]\n"
                ),
                "rules[0].key_image",
            ),
            (
                &format!(
                    "[[rules]]\npipeline = \"mvdiffusion\"\nmodel = \"{TINY}\"\nwindow = \"40,-1\"\nsend_to = [\"PACS\"]\n"
                ),
                "rules[0].window",
            ),
            (
                &format!(
                    "[[rules]]\npipeline = \"mvdiffusion\"\nmodel = \"{TINY}\"\nneus_profile = \"turbo\"\nsend_to = [\"PACS\"]\n"
                ),
                "rules[0].neus_profile",
            ),
        ] {
            let err = cfg(rules).unwrap_err();
            assert!(err.contains(key), "{err} should name {key}");
        }
    }
}
