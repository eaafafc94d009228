// kstatus: what sigs.k8s.io/cli-utils' kstatus (the status library of Flux, kpt and
// cli-utils) computes for each object of a JSON list read from stdin, one line each:
// name, status, message, tab-separated. The integration tests check every GpuInstance
// phase against it.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	var objs []json.RawMessage
	if err := json.NewDecoder(os.Stdin).Decode(&objs); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus: reading a JSON list of objects:", err)
		os.Exit(2)
	}
	for _, raw := range objs {
		// As the apiserver's clients decode it (whole numbers as int64).
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(raw); err != nil {
			fmt.Fprintln(os.Stderr, "kstatus: decoding an object:", err)
			os.Exit(2)
		}
		r, err := status.Compute(u)
		if err != nil {
			fmt.Printf("%s\tError\t%s\n", u.GetName(), err)
			continue
		}
		fmt.Printf("%s\t%s\t%s\n", u.GetName(), r.Status, r.Message)
	}
}
