-- A node database (data dir node.db) written by the release before cluster ids: parking
-- schema 3, raft schema 1: the schema-2 database of the cluster-id work (see below) opened
-- by parkd at a06db11 (wp-me, schema 3: trend buckets) as a node opens it, then dumped with
-- sqlite3's iterdump.  The schema-2 database's own header:
-- A node database (data dir node.db) written by the previous release: parking schema 2,
-- raft schema 1 (parkd at 5ae07e3 on wp-ident, before cluster ids), made through
-- SqliteStorage.save and ParkingState.apply and dumped with sqlite3's iterdump.  Lots
-- north (100) and south (60).  Entries: 1 a NOOP; 2-5 frames (camera 2 of incarnation
-- 0x1122334455667788; camera 1 first of incarnation 0, then at 5 of incarnation 2**64 - 2,
-- stored as -2); 6 disables camera 2, so its frame at 7 is refused; 8 a CONFIG entry
-- adding node 4 as a learner (voters 1, 2, 3); 9 a retention entry (cutoff 1004: trims
-- camera 1's incarnation 0 seq 1); 10 a frame of camera 3; 11 enables camera 2; 12 the
-- next frame of camera 1.  No cluster id and no member data dirs: the release had none.
-- Do not regenerate: it stands for databases on disk.
BEGIN TRANSACTION;
CREATE TABLE applied (
	id INTEGER NOT NULL, 
	last_applied INTEGER NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "applied" VALUES(1,12);
CREATE TABLE camera_registry (
	camera_id INTEGER NOT NULL, 
	enabled BOOLEAN NOT NULL, 
	log_index INTEGER NOT NULL, 
	PRIMARY KEY (camera_id)
);
INSERT INTO "camera_registry" VALUES(2,1,11);
CREATE TABLE cameras (
	camera_id INTEGER NOT NULL, 
	lot TEXT NOT NULL, 
	incarnation INTEGER NOT NULL, 
	PRIMARY KEY (camera_id)
);
INSERT INTO "cameras" VALUES(1,'north',-2);
INSERT INTO "cameras" VALUES(2,'south',1234605616436508552);
INSERT INTO "cameras" VALUES(3,'north',0);
CREATE TABLE entries (
	"index" INTEGER NOT NULL, 
	term INTEGER NOT NULL, 
	kind INTEGER NOT NULL, 
	data BLOB NOT NULL, 
	PRIMARY KEY ("index")
);
INSERT INTO "entries" VALUES(1,1,1,X'');
INSERT INTO "entries" VALUES(2,1,0,X'010100000001000000000000000000000000408F400A0000006E6F727468');
INSERT INTO "entries" VALUES(3,1,0,X'0202000000887766554433221101000000000000000000000000688F4014000000736F757468');
INSERT INTO "entries" VALUES(4,1,0,X'010100000002000000000000000000000000908F400B0000006E6F727468');
INSERT INTO "entries" VALUES(5,1,0,X'0201000000FEFFFFFFFFFFFFFF01000000000000000000000000E08F40280000006E6F727468');
INSERT INTO "entries" VALUES(6,1,0,X'430002000000');
INSERT INTO "entries" VALUES(7,1,0,X'020200000088776655443322110200000000000000000000000004904015000000736F757468');
INSERT INTO "entries" VALUES(8,1,2,X'01010000000400030000000100000002000000030001000000047B226964223A342C2272616674223A223132372E302E302E313A37313034222C22636C69656E74223A223132372E302E302E313A37323034222C2268747470223A223132372E302E302E313A37333034227D');
INSERT INTO "entries" VALUES(9,1,0,X'520000000000608F40');
INSERT INTO "entries" VALUES(10,1,0,X'0103000000010000000000000000000000001890401E0000006E6F727468');
INSERT INTO "entries" VALUES(11,1,0,X'430102000000');
INSERT INTO "entries" VALUES(12,1,0,X'0201000000FEFFFFFFFFFFFFFF02000000000000000000000000409040290000006E6F727468');
CREATE TABLE frames (
	camera_id INTEGER NOT NULL, 
	incarnation INTEGER NOT NULL, 
	seq INTEGER NOT NULL, 
	free INTEGER NOT NULL, 
	captured_at FLOAT NOT NULL, 
	log_index INTEGER NOT NULL, 
	PRIMARY KEY (camera_id, incarnation, seq)
);
INSERT INTO "frames" VALUES(2,1234605616436508552,1,20,1005.0,3);
INSERT INTO "frames" VALUES(1,0,2,11,1010.0,4);
INSERT INTO "frames" VALUES(1,-2,1,40,1020.0,5);
INSERT INTO "frames" VALUES(3,0,1,30,1030.0,10);
INSERT INTO "frames" VALUES(1,-2,2,41,1040.0,12);
CREATE TABLE hard_state (
	id INTEGER NOT NULL, 
	term INTEGER NOT NULL, 
	vote INTEGER NOT NULL, 
	"commit" INTEGER NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "hard_state" VALUES(1,1,1,12);
CREATE TABLE incarnations (
	camera_id INTEGER NOT NULL, 
	incarnation INTEGER NOT NULL, 
	last_seq INTEGER NOT NULL, 
	free INTEGER NOT NULL, 
	last_seen FLOAT NOT NULL, 
	trimmed_seq INTEGER DEFAULT '0' NOT NULL, 
	superseded_index INTEGER, 
	PRIMARY KEY (camera_id, incarnation)
)
 WITHOUT ROWID

;
INSERT INTO "incarnations" VALUES(1,-2,2,41,1040.0,0,NULL);
INSERT INTO "incarnations" VALUES(1,0,2,11,1010.0,1,5);
INSERT INTO "incarnations" VALUES(2,1234605616436508552,1,20,1005.0,0,NULL);
INSERT INTO "incarnations" VALUES(3,0,1,30,1030.0,0,NULL);
CREATE TABLE lot_buckets (
	lot TEXT NOT NULL, 
	width INTEGER NOT NULL, 
	bucket FLOAT NOT NULL, 
	log_index INTEGER NOT NULL, 
	captured_at FLOAT NOT NULL, 
	free INTEGER NOT NULL, 
	PRIMARY KEY (lot, width, bucket)
)
 WITHOUT ROWID

;
INSERT INTO "lot_buckets" VALUES('north',10,1010.0,4,1010.0,11);
INSERT INTO "lot_buckets" VALUES('north',10,1020.0,5,1020.0,40);
INSERT INTO "lot_buckets" VALUES('north',10,1030.0,10,1030.0,30);
INSERT INTO "lot_buckets" VALUES('north',10,1040.0,12,1040.0,41);
INSERT INTO "lot_buckets" VALUES('north',60,960.0,4,1010.0,11);
INSERT INTO "lot_buckets" VALUES('north',60,1020.0,12,1040.0,41);
INSERT INTO "lot_buckets" VALUES('north',600,600.0,12,1040.0,41);
INSERT INTO "lot_buckets" VALUES('south',10,1000.0,3,1005.0,20);
INSERT INTO "lot_buckets" VALUES('south',60,960.0,3,1005.0,20);
INSERT INTO "lot_buckets" VALUES('south',600,600.0,3,1005.0,20);
CREATE TABLE lots (
	id TEXT NOT NULL, 
	capacity INTEGER NOT NULL, 
	free INTEGER, 
	updated_at FLOAT, 
	PRIMARY KEY (id)
);
INSERT INTO "lots" VALUES('north',100,41,1040.0);
INSERT INTO "lots" VALUES('south',60,20,1005.0);
CREATE TABLE retention_cuts (
	"index" INTEGER NOT NULL, 
	cutoff FLOAT NOT NULL, 
	frames_at FLOAT, 
	frames_camera INTEGER, 
	frames_incarnation INTEGER, 
	frames_seq INTEGER, 
	frames_done BOOLEAN DEFAULT '0' NOT NULL, 
	buckets_lot TEXT, 
	buckets_width INTEGER, 
	buckets_at FLOAT, 
	frames_deleted INTEGER DEFAULT '0' NOT NULL, 
	PRIMARY KEY ("index")
);
CREATE TABLE schema_version (
	component TEXT NOT NULL, 
	version INTEGER NOT NULL, 
	PRIMARY KEY (component)
);
INSERT INTO "schema_version" VALUES('raft',1);
INSERT INTO "schema_version" VALUES('parking',3);
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
