#!/usr/bin/env bash
# Builds versitygw (an S3 server over a local folder, Apache-2.0) into <repo>/.bin/ once, and
# prints its folder.
exec "$(dirname "$0")/../../scripts/go-install" versitygw v1.8.0 github.com/versity/versitygw/cmd/versitygw
