"""The MPPS figure's scanner (bench/mpps.sh): a synthetic CT series and the MPPS messages
about it.

    mpps.py make DIR N          N 64x64 CT slices of a new series in DIR
    mpps.py create PORT UID     N-CREATE IN PROGRESS
    mpps.py complete PORT UID DIR   N-SET COMPLETED listing every instance in DIR
"""
import os
import sys

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep

CT = "1.2.840.10008.5.1.4.1.1.2"


def make(out, n):
    os.makedirs(out, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CT
        ds.SOPClassUID = CT
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = frame
        ds.Modality = "CT"
        ds.PatientName, ds.PatientID = "BENCH^MPPS", "BENCH01"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(k)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 1.0
        ds.Rows = ds.Columns = 64
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        y, x = np.mgrid[0:64, 0:64]
        r = np.sqrt((x - 32) ** 2 + (y - 32) ** 2 + (k - n / 2) ** 2)
        ds.PixelData = np.where(r < 20, 1000, -1000).astype(np.int16).tobytes()
        ds.save_as(os.path.join(out, "CT%04d.dcm" % (k + 1)), enforce_file_format=True)


def send(port, request):
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", port, ae_title="M3DNODE")
    assert assoc.is_established, "association failed"
    st, _ = request(assoc)
    assoc.release()
    assert st and st.Status == 0, st


def create(port, uid):
    ds = Dataset()
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedStationAETitle = "SCANNER"
    ds.PerformedProcedureStepStartDate = "20261204"
    ds.PerformedProcedureStepStartTime = "120000"
    ds.PerformedProcedureStepID = "PPS"
    ds.Modality = "CT"
    ds.PatientName, ds.PatientID = "BENCH^MPPS", "BENCH01"
    item = Dataset()
    item.StudyInstanceUID = generate_uid()
    item.ReferencedStudySequence = []
    item.AccessionNumber = ""
    ds.ScheduledStepAttributesSequence = [item]
    ds.PerformedSeriesSequence = []
    send(port, lambda a: a.send_n_create(ds, ModalityPerformedProcedureStep, uid))


def complete(port, uid, folder):
    from pydicom import dcmread
    refs, series = [], None
    for name in sorted(os.listdir(folder)):
        f = dcmread(os.path.join(folder, name), stop_before_pixels=True)
        series = f.SeriesInstanceUID
        r = Dataset()
        r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID = f.SOPClassUID, f.SOPInstanceUID
        refs.append(r)
    s = Dataset()
    s.SeriesInstanceUID = series
    s.ProtocolName = "bench"
    s.ReferencedImageSequence = refs
    ds = Dataset()
    ds.PerformedProcedureStepStatus = "COMPLETED"
    ds.PerformedProcedureStepEndDate = "20261204"
    ds.PerformedProcedureStepEndTime = "121000"
    ds.PerformedSeriesSequence = [s]
    send(port, lambda a: a.send_n_set(ds, ModalityPerformedProcedureStep, uid))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "make":
        make(sys.argv[2], int(sys.argv[3]))
    elif cmd == "create":
        create(int(sys.argv[2]), sys.argv[3])
    elif cmd == "complete":
        complete(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)
