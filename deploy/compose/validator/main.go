// Command compose-validate loads Compose files with compose-go, the library Docker Compose itself
// loads them with: JSON-schema validation against the Compose specification, interpolation,
// merging of several files, normalisation and the consistency checks (undefined secrets, volumes,
// networks, depends_on targets, ...). It prints the project Compose would run as JSON, so tests can
// check the model itself rather than re-parse the YAML their own way.
//
// Built by build.sh into .cache/bin; the tests under tests/unit/deploy run it.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: compose-validate FILE [OVERRIDE_FILE...]")
		os.Exit(2)
	}
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "compose-validate:", err)
		os.Exit(1)
	}
}

func run(files []string) error {
	// Relative paths (build contexts, secret and config files) resolve against the first file's
	// folder, as `docker compose -f FILE` does.
	options, err := cli.NewProjectOptions(files,
		cli.WithWorkingDirectory(filepath.Dir(files[0])),
		cli.WithOsEnv,
		cli.WithInterpolation(true),
		cli.WithNormalization(true),
		cli.WithConsistency(true),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		return err
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		return err
	}
	out, err := project.MarshalJSON()
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(append(out, '\n'))
	return err
}
