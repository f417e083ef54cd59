-- aws_commons: the helpers and types of Aurora's docs.
CREATE EXTENSION aws_commons;
SELECT aws_commons.create_s3_uri('sample_s3_bucket', 'sample.csv', 'us-east-1') AS s3_uri;
SELECT (aws_commons.create_s3_uri('sample_s3_bucket', 'sample.csv', 'us-east-1')).*;
SELECT aws_commons.create_aws_credentials('sample_access_key', 'sample_secret_key', '') AS credentials;
SELECT (aws_commons.create_aws_credentials('sample_access_key', 'sample_secret_key', 'token')).*;
SELECT aws_commons.create_s3_uri('sample_s3_bucket');
