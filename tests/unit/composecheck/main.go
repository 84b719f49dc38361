// Command composecheck loads a Compose file with the Compose specification's
// reference implementation (github.com/compose-spec/compose-go) and exits non-zero
// with the loader's error when the file does not conform: the loader validates the
// file against the specification's schema, then resolves and checks the project
// (service references in depends_on, volumes, networks, interpolation).
//
// Usage: composecheck FILE
//
// On success it prints the project as the loader resolved it, in JSON, so that
// tests/unit/test_deploy.py can assert on services, images, volumes and ports
// exactly as Compose would see them. Built by the tests into a cache directory
// outside the repository; nothing of compose-go is committed but go.mod and go.sum.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: composecheck FILE")
		os.Exit(2)
	}
	file, err := filepath.Abs(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "composecheck:", err)
		os.Exit(2)
	}
	opts, err := cli.NewProjectOptions(
		[]string{file},
		cli.WithName("otelbridge"),
		cli.WithWorkingDirectory(filepath.Dir(file)),
		// only the file and the process environment: no .env file of the user's
		cli.WithOsEnv,
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, "composecheck:", err)
		os.Exit(1)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, "composecheck:", err)
		os.Exit(1)
	}
	out, err := json.Marshal(project)
	if err != nil {
		fmt.Fprintln(os.Stderr, "composecheck:", err)
		os.Exit(1)
	}
	fmt.Println(string(out))
}
