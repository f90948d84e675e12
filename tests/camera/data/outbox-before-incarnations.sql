-- A camera state dir (outbox.db) written by the previous release, which stored no
-- incarnation (parkd at e53ab6e on wp-inc, the same outbox as main at b34006b), dumped
-- with sqlite3's iterdump.  Seven frames captured, 1-4 acked, 5-7 waiting; next seq 8.
-- Do not regenerate: it stands for state dirs on disk.
BEGIN TRANSACTION;
CREATE TABLE frames (
	seq INTEGER NOT NULL, 
	captured_at FLOAT NOT NULL, 
	payload BLOB NOT NULL, 
	PRIMARY KEY (seq)
);
INSERT INTO "frames" VALUES(5,2004.0,X'7061796C6F61642D35');
INSERT INTO "frames" VALUES(6,2005.0,X'7061796C6F61642D36');
INSERT INTO "frames" VALUES(7,2006.0,X'7061796C6F61642D37');
CREATE TABLE meta (
	"key" VARCHAR NOT NULL, 
	value INTEGER NOT NULL, 
	PRIMARY KEY ("key")
);
INSERT INTO "meta" VALUES('next_seq',8);
INSERT INTO "meta" VALUES('dropped',0);
COMMIT;
