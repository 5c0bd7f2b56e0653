// Command rampart-peer-otelcol is the OpenTelemetry Collector distribution Rampart is measured
// against (benchmarks/peer_bench.py): only the components the two comparison pipelines use, all of
// one collector release (core v0.165.0 / v1.71.0, contrib v0.165.1). Built by scripts/build-peer.
//
//	rampart-peer-otelcol --config benchmarks/peer/gateway.yaml   # (a) OTLP/HTTP in -> Kafka out
//	rampart-peer-otelcol --config benchmarks/peer/stages.yaml    # (b) Kafka in -> redaction -> OTLP out
package main

import (
	"log"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/provider/envprovider"
	"go.opentelemetry.io/collector/confmap/provider/fileprovider"
	"go.opentelemetry.io/collector/otelcol"
)

// Version is the collector release the distribution is built from; the benchmark records it.
const Version = "0.165.0"

func main() {
	info := component.BuildInfo{
		Command:     "rampart-peer-otelcol",
		Description: "OpenTelemetry Collector peer for Rampart's benchmarks",
		Version:     Version,
	}
	settings := otelcol.CollectorSettings{
		BuildInfo: info,
		Factories: components,
		ConfigProviderSettings: otelcol.ConfigProviderSettings{
			ResolverSettings: confmap.ResolverSettings{
				ProviderFactories: []confmap.ProviderFactory{
					fileprovider.NewFactory(),
					envprovider.NewFactory(),
				},
				DefaultScheme: "env",
			},
		},
	}
	if err := otelcol.NewCommand(settings).Execute(); err != nil {
		log.Fatalf("collector failed: %v", err)
	}
}
