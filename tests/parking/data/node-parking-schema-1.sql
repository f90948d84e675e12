-- A node database (data dir node.db) written by the previous release: parking schema 1,
-- raft schema 1 (parkd at e53ab6e on wp-inc, the same schemas as main at b34006b),
-- dumped with sqlite3's iterdump.  Lots north (100) and south (60).  Entries: 1 a NOOP;
-- 2-9 frames of cameras 1 and 2, with a retry of camera 1's seq 2 at 7 (duplicate) and
-- camera 1's seq 4 arriving late at 9 (after seq 5); 10 a retention entry (cutoff 1015:
-- trims camera 1's seqs 1-2 and camera 2's seq 1, so trimmed_seq 2 and 1); 11-12 frames
-- of cameras 2 and 3.  The log holds codec VERSION 1 frame results.
-- Do not regenerate: it stands for databases on disk.
BEGIN TRANSACTION;
CREATE TABLE applied (
	id INTEGER NOT NULL, 
	last_applied INTEGER NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "applied" VALUES(1,12);
CREATE TABLE cameras (
	camera_id INTEGER NOT NULL, 
	lot TEXT NOT NULL, 
	last_seq INTEGER NOT NULL, 
	free INTEGER NOT NULL, 
	last_seen FLOAT NOT NULL, 
	trimmed_seq INTEGER DEFAULT '0' NOT NULL, 
	PRIMARY KEY (camera_id)
);
INSERT INTO "cameras" VALUES(1,'north',5,15,1040.0,2);
INSERT INTO "cameras" VALUES(2,'south',3,23,1050.0,1);
INSERT INTO "cameras" VALUES(3,'north',1,30,1060.0,0);
CREATE TABLE entries (
	"index" INTEGER NOT NULL, 
	term INTEGER NOT NULL, 
	kind INTEGER NOT NULL, 
	data BLOB NOT NULL, 
	PRIMARY KEY ("index")
);
INSERT INTO "entries" VALUES(1,1,1,X'');
INSERT INTO "entries" VALUES(2,1,0,X'010100000001000000000000000000000000408F400A0000006E6F727468');
INSERT INTO "entries" VALUES(3,1,0,X'010200000001000000000000000000000000688F4014000000736F757468');
INSERT INTO "entries" VALUES(4,1,0,X'010100000002000000000000000000000000908F400B0000006E6F727468');
INSERT INTO "entries" VALUES(5,1,0,X'010100000003000000000000000000000000E08F400C0000006E6F727468');
INSERT INTO "entries" VALUES(6,1,0,X'01020000000200000000000000000000000004904015000000736F757468');
INSERT INTO "entries" VALUES(7,1,0,X'010100000002000000000000000000000000908F400B0000006E6F727468');
INSERT INTO "entries" VALUES(8,1,0,X'0101000000050000000000000000000000004090400F0000006E6F727468');
INSERT INTO "entries" VALUES(9,1,0,X'0101000000040000000000000000000000001890400E0000006E6F727468');
INSERT INTO "entries" VALUES(10,1,0,X'520000000000B88F40');
INSERT INTO "entries" VALUES(11,1,0,X'01020000000300000000000000000000000068904017000000736F757468');
INSERT INTO "entries" VALUES(12,1,0,X'0103000000010000000000000000000000009090401E0000006E6F727468');
CREATE TABLE frames (
	camera_id INTEGER NOT NULL, 
	seq INTEGER NOT NULL, 
	free INTEGER NOT NULL, 
	captured_at FLOAT NOT NULL, 
	log_index INTEGER NOT NULL, 
	PRIMARY KEY (camera_id, seq)
);
INSERT INTO "frames" VALUES(1,3,12,1020.0,5);
INSERT INTO "frames" VALUES(2,2,21,1025.0,6);
INSERT INTO "frames" VALUES(1,5,15,1040.0,8);
INSERT INTO "frames" VALUES(1,4,14,1030.0,9);
INSERT INTO "frames" VALUES(2,3,23,1050.0,11);
INSERT INTO "frames" VALUES(3,1,30,1060.0,12);
CREATE TABLE hard_state (
	id INTEGER NOT NULL, 
	term INTEGER NOT NULL, 
	vote INTEGER NOT NULL, 
	"commit" INTEGER NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "hard_state" VALUES(1,1,1,12);
CREATE TABLE lots (
	id TEXT NOT NULL, 
	capacity INTEGER NOT NULL, 
	free INTEGER, 
	updated_at FLOAT, 
	PRIMARY KEY (id)
);
INSERT INTO "lots" VALUES('north',100,30,1060.0);
INSERT INTO "lots" VALUES('south',60,23,1050.0);
CREATE TABLE schema_version (
	component TEXT NOT NULL, 
	version INTEGER NOT NULL, 
	PRIMARY KEY (component)
);
INSERT INTO "schema_version" VALUES('raft',1);
INSERT INTO "schema_version" VALUES('parking',1);
CREATE TABLE snapshot_meta (
	id INTEGER NOT NULL, 
	"index" INTEGER NOT NULL, 
	term INTEGER NOT NULL, 
	voters TEXT NOT NULL, 
	learners TEXT NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "snapshot_meta" VALUES(1,0,0,'[]','[]');
CREATE INDEX frames_by_captured_at ON frames (captured_at);
COMMIT;
