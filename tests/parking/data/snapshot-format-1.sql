-- A snapshot file (FORMAT_VERSION 1) written by the writer before the pin/write split
-- (parkd/parking/snapshot.py at 47f20a6, write_snapshot), dumped with sqlite3's iterdump.
-- Index 14, term 2, voters [1, 2, 3], learner 4 from the CONFIG entry at 11; a retention
-- trim at entry 13 (cameras.trimmed_seq).  Do not regenerate: it stands for files on disk.
BEGIN TRANSACTION;
CREATE TABLE applied (
	id INTEGER NOT NULL, 
	last_applied INTEGER NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "applied" VALUES(1,14);
CREATE TABLE cameras (
	camera_id INTEGER NOT NULL, 
	lot TEXT NOT NULL, 
	last_seq INTEGER NOT NULL, 
	free INTEGER NOT NULL, 
	last_seen FLOAT NOT NULL, 
	trimmed_seq INTEGER DEFAULT '0' NOT NULL, 
	PRIMARY KEY (camera_id)
);
INSERT INTO "cameras" VALUES(1,'north',9,42,1200.0,2);
INSERT INTO "cameras" VALUES(2,'south',4,20,1100.0,1);
INSERT INTO "cameras" VALUES(3,'north',4,27,1110.0,1);
CREATE TABLE frames (
	camera_id INTEGER NOT NULL, 
	seq INTEGER NOT NULL, 
	free INTEGER NOT NULL, 
	captured_at FLOAT NOT NULL, 
	log_index INTEGER NOT NULL, 
	PRIMARY KEY (camera_id, seq)
);
INSERT INTO "frames" VALUES(2,2,28,1040.0,4);
INSERT INTO "frames" VALUES(3,2,35,1050.0,5);
INSERT INTO "frames" VALUES(1,3,42,1060.0,6);
INSERT INTO "frames" VALUES(2,3,49,1070.0,7);
INSERT INTO "frames" VALUES(3,3,6,1080.0,8);
INSERT INTO "frames" VALUES(1,4,13,1090.0,9);
INSERT INTO "frames" VALUES(2,4,20,1100.0,10);
INSERT INTO "frames" VALUES(3,4,27,1110.0,11);
INSERT INTO "frames" VALUES(1,5,34,1120.0,12);
INSERT INTO "frames" VALUES(1,9,42,1200.0,14);
CREATE TABLE lots (
	id TEXT NOT NULL, 
	capacity INTEGER NOT NULL, 
	free INTEGER, 
	updated_at FLOAT, 
	PRIMARY KEY (id)
);
INSERT INTO "lots" VALUES('north',100,42,1200.0);
INSERT INTO "lots" VALUES('south',60,20,1100.0);
CREATE TABLE members (
	position INTEGER NOT NULL, 
	data TEXT NOT NULL, 
	PRIMARY KEY (position)
);
INSERT INTO "members" VALUES(0,'{"id": 1, "raft": "127.0.0.1:7101", "client": "127.0.0.1:7201"}');
INSERT INTO "members" VALUES(1,'{"id": 2, "raft": "127.0.0.1:7102", "client": "127.0.0.1:7202"}');
INSERT INTO "members" VALUES(2,'{"id": 3, "raft": "127.0.0.1:7103", "client": "127.0.0.1:7203"}');
INSERT INTO "members" VALUES(3,'{"id": 4, "raft": "127.0.0.1:7104", "client": "127.0.0.1:7204"}');
CREATE TABLE snapshot_meta (
	id INTEGER NOT NULL, 
	format INTEGER NOT NULL, 
	parking_schema INTEGER NOT NULL, 
	"index" INTEGER NOT NULL, 
	term INTEGER NOT NULL, 
	voters TEXT NOT NULL, 
	learners TEXT NOT NULL, 
	config_index INTEGER NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "snapshot_meta" VALUES(1,1,1,14,2,'[1, 2, 3]','[4]',11);
COMMIT;
