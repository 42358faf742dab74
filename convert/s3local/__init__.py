"""`convert s3-local`: a local S3 store (SeaweedFS on 127.0.0.1) for users, and the server
the tests and the bench start."""
