-- aws_commons 1.2: types and helpers shared by the aws_* extensions, as on Aurora.
\echo Use "CREATE EXTENSION aws_commons" to load this file. \quit

CREATE SCHEMA aws_commons;
GRANT USAGE ON SCHEMA aws_commons TO PUBLIC;
