-- Migration 4: the objects a job made. A result is now several DICOM objects (an Encapsulated
-- STL per structure, OBJ + MTL, a Surface Segmentation), each with the structure it shows and
-- that structure's label and recommended colour: the status page draws every structure in its
-- colour, and `m3dnode jobs` can list what a job made. Jobs done before this migration made
-- one Encapsulated STL, their `result_sop_instance_uid`, and have no rows here.

CREATE TABLE result_objects (
    job_id           INTEGER NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    -- stl | obj | mtl | surface-seg
    kind             TEXT NOT NULL,
    -- index of the structure in the rule (NULL: an object holding every structure)
    structure        INTEGER,
    label            TEXT,
    -- recommended display colour as sRGB '#rrggbb'
    colour           TEXT,
    opacity          REAL,
    PRIMARY KEY (job_id, sop_instance_uid)
);
