#!/usr/bin/env bash
# Makes testdata/storage-v0/var: a storage written by the release before schema versioning
# (commit 3255488), for tests/migration.rs. Not run by the tests; kept so the fixture can be
# made again. Usage: testdata/storage-v0/make.sh OLD_M3DNODE_BINARY
# Needs DCMTK (storescu, storescp) and target/pyenv (pydicom).
set -euo pipefail
old=${1:?usage: make.sh OLD_M3DNODE_BINARY}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
node_pid=
scp_pid=
trap 'kill $node_pid $scp_pid 2>/dev/null || true; rm -rf "$work"' EXIT

# Inputs: a small MR series (a job makes a result) and single MR/CT slices re-labelled as
# new patients whose text is in non-ASCII character sets (PS3.5 annex H/I/J examples).
"$repo/target/pyenv/bin/python" - "$repo" "$work/in" <<'PY'
import sys, pathlib, pydicom
from pydicom.uid import generate_uid
repo, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
out.mkdir(parents=True)
# pydicom encodes the names (its ISO 2022 encoder writes the escape sequences).
sets = [
    ("KR", "\\ISO 2022 IR 149", "Hong^Gildong=洪^吉洞=홍^길동"),
    ("JP", "\\ISO 2022 IR 87", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    ("DE", "ISO_IR 100", "Müller^Jürgen"),
    ("CN", "GB18030", "Wang^XiaoDong=王^小东="),
    ("UT", "ISO_IR 192", "Wang^XiaoDong=王^小東="),
]
for i, (tag, cs, name) in enumerate(sets):
    src = "MR_small.dcm" if i % 2 == 0 else "CT_small.dcm"
    ds = pydicom.dcmread(repo / "testdata/files/pydicom" / src)
    ds.SpecificCharacterSet = cs
    ds.PatientName = name
    ds.ReferringPhysicianName = name
    ds.StudyDescription = name.split("=")[-2] if "=" in name else name
    ds.PatientID = f"PID-{tag}"
    ds.IssuerOfPatientID = "M3D-FIXTURE"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = f"2024010{i + 1}"
    ds.StudyTime = "101500"
    ds.AccessionNumber = f"ACC{i}"
    ds.StudyID = f"S{i}"
    ds.SeriesNumber = 7
    ds.SeriesDescription = f"charset {cs.strip(chr(92))}"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(out / f"{tag}.dcm", enforce_file_format=True)

# A small MR series of a sphere (16 slices of 64x64, 2 mm), so that the job's result is small.
import numpy as np
study, series = generate_uid(), generate_uid()
(out / "sphere").mkdir()
for k in range(16):
    ds = pydicom.dcmread(repo / "testdata/files/pydicom/MR_small.dcm")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Sphère^Test"
    ds.PatientID = "PID-SPHERE"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesNumber, ds.InstanceNumber = 3, k + 1
    ds.SeriesDescription = "sphere phantom"
    ds.BodyPartExamined = "HEAD"
    ds.StudyDate, ds.SeriesDate, ds.SeriesTime = "20240301", "20240301", "120000"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-63.0, -63.0, 2.0 * k - 15.0]
    ds.PixelSpacing = [2, 2]
    ds.SliceThickness = 2
    ds.SpacingBetweenSlices = 2
    y, x = np.mgrid[0:64, 0:64]
    z = 2.0 * k - 15.0
    r2 = ((x - 31.5) * 2) ** 2 + ((y - 31.5) * 2) ** 2 + z ** 2
    img = np.where(r2 < 40.0 ** 2, 800, 20).astype(np.int16)
    ds.PixelData = img.tobytes()
    ds.save_as(out / "sphere" / f"IM{k:02d}.dcm", enforce_file_format=True)
PY

scp_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
down_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/pacs"
storescp -aet PACS -od "$work/pacs" "$scp_port" & scp_pid=$!
cat > "$work/m3dnode.toml" <<TOML
[node]
listen = "127.0.0.1:0"
storage = "$work/var"
min_free_mb = 1
[series]
quiet_seconds = 2
[[peers]]
ae_title = "PACS"
address = "127.0.0.1:$scp_port"
[[peers]]
ae_title = "DOWN"
address = "127.0.0.1:$down_port"
[[rules]]
name = "mr"
modality = "MR"
preset = "mr-head"
send_to = ["PACS", "DOWN"]
reply_to_sender = false
TOML
"$old" serve --config "$work/m3dnode.toml" > "$work/out" 2> "$work/node.log" & node_pid=$!
for _ in $(seq 100); do grep -q listening "$work/out" && break; sleep 0.1; done
port=$(sed -n 's/.*127.0.0.1:\([0-9]*\).*/\1/p' "$work/out")
storescu -aec M3DNODE +sd +r 127.0.0.1 "$port" "$work/in/sphere"
storescu -aec M3DNODE 127.0.0.1 "$port" "$work"/in/*.dcm
# Each MR series' job (done; delivered to PACS, pending for DOWN); CT slices match no rule.
for _ in $(seq 600); do
    grep -q '"result delivered"\|result delivered' "$work/node.log" && break; sleep 0.2
done
sleep 2
kill -TERM $node_pid; wait $node_pid || true
rm -rf "$here/var"
mkdir -p "$here/var"
cp -a "$work/var/." "$here/var/"
rm -f "$here/var/m3dnode.lock"
cp "$work/node.log" "$here/make.log"
echo "made $here/var"
