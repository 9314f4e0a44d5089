-- Keep embeddings in the heap row. `vector` defaults to EXTENDED storage, so a case whose row
-- passes ~2 kB (a 384-dimension embedding is 1.5 kB, plus the task text) had its embedding moved
-- to the TOAST table, and computing the similarity of each candidate an HNSW scan returns then
-- cost a TOAST index lookup. MAIN keeps it inline (other columns go out of line first), and
-- still allows out-of-line storage as a last resort for embeddings too large for a page.
-- Applies to rows written from now on; VACUUM FULL rewrites older ones.
ALTER TABLE cases ALTER COLUMN embedding SET STORAGE MAIN;
