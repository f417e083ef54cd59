-- The objects of each extension, on a fresh database: a changed signature, a lost or an
-- unexpected object shows here.
CREATE EXTENSION azure_ai;
CREATE EXTENSION azure_local_ai CASCADE;
CREATE EXTENSION aws_ml CASCADE;
SELECT extname, extversion FROM pg_extension
WHERE extname IN ('azure_ai', 'azure_local_ai', 'aws_commons', 'aws_ml') ORDER BY extname;
\dx+ azure_ai
\dx+ azure_local_ai
\dx+ aws_commons
\dx+ aws_ml
-- What \dx+ does not show: each function's result, volatility, parallel safety,
-- SECURITY DEFINER, and whether PUBLIC may call it.
SELECT e.extname AS extension, p.oid::regprocedure AS function,
       pg_get_function_result(p.oid) AS result,
       p.provolatile AS volatile, p.proparallel AS parallel, p.prosecdef AS definer,
       has_function_privilege('public', p.oid, 'EXECUTE') AS public
FROM pg_extension e
JOIN pg_depend d ON d.refobjid = e.oid AND d.refclassid = 'pg_extension'::regclass
                AND d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
JOIN pg_proc p ON p.oid = d.objid
WHERE e.extname IN ('azure_ai', 'azure_local_ai', 'aws_commons', 'aws_ml')
ORDER BY e.extname, p.oid::regprocedure::text COLLATE "C";
-- The roles the extensions grant to, and what their members may do.
SELECT r.rolname AS role, e.extname AS extension, p.oid::regprocedure AS function
FROM pg_extension e
JOIN pg_depend d ON d.refobjid = e.oid AND d.refclassid = 'pg_extension'::regclass
                AND d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
JOIN pg_proc p ON p.oid = d.objid
CROSS JOIN LATERAL aclexplode(p.proacl) AS a
JOIN pg_roles r ON r.oid = a.grantee
WHERE e.extname IN ('azure_ai', 'azure_local_ai', 'aws_commons', 'aws_ml')
  AND a.privilege_type = 'EXECUTE' AND NOT r.rolsuper
ORDER BY r.rolname, e.extname, p.oid::regprocedure::text COLLATE "C";
