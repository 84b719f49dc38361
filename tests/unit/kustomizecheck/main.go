// kustomizecheck renders a kustomization directory with the kustomize API (the library
// kubectl kustomize embeds), printing the objects as one YAML stream. The tests use it
// where kubectl is not installed (tests/unit/test_deploy.py).
package main

import (
	"fmt"
	"os"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: kustomizecheck DIR")
		os.Exit(2)
	}
	objects, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "kustomizecheck:", err)
		os.Exit(1)
	}
	out, err := objects.AsYaml()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kustomizecheck:", err)
		os.Exit(1)
	}
	os.Stdout.Write(out)
}
