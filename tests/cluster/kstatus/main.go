// Command kstatus prints what Flux's health checks see: the kstatus of each object in a
// Kubernetes List read from stdin (`kubectl get ... -o json`), one JSON line per object.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Kind    string `json:"kind"`
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	var list unstructured.UnstructuredList
	data, err := io.ReadAll(os.Stdin)
	if err == nil {
		err = list.UnmarshalJSON(data) // keeps integers int64, as kstatus expects
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kstatus: reading a List from stdin:", err)
		os.Exit(1)
	}
	out := json.NewEncoder(os.Stdout)
	for i := range list.Items {
		item := &list.Items[i]
		computed, err := status.Compute(item)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kstatus:", item.GetName(), err)
			os.Exit(1)
		}
		_ = out.Encode(result{item.GetKind(), item.GetName(), computed.Status.String(), computed.Message})
	}
}
