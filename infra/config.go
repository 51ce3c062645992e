package main

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi/config"
)

// Modes of the stack.
const (
	DeployFargate = "fargate"
	DeployLambda  = "lambda"

	BrokerFargate  = "fargate"
	BrokerAmazonMQ = "amazonmq"

	DatabaseExternal = "external"
	DatabaseRDS      = "rds"

	AmazonMQSingle  = "single"
	AmazonMQCluster = "cluster"
)

// Settings is the stack configuration (namespace "invoicing"), read once.
// Secrets stay pulumi outputs marked secret from config to Secrets Manager.
type Settings struct {
	Project string // prefix of every physical name: <project>-<stack>
	Region  string // aws:region

	DeployMode string
	BrokerMode string
	Database   string

	AmazonMQDeployment   string
	AmazonMQInstanceType string

	BrokerUsername string
	BrokerPassword pulumi.StringOutput // secret

	OrdersDatabaseURL   pulumi.StringOutput // secret, database=external
	InvoicesDatabaseURL pulumi.StringOutput // secret, database=external
	DatabasePassword    pulumi.StringOutput // secret, database=rds
	DatabaseClass       string

	OTLPEndpoint   string
	OTLPHeaders    pulumi.StringOutput // secret, may be empty
	HasOTLPHeaders bool

	AllowedOrigins []string
	ImageTag       string
	CertificateARN string
	AdminCIDRs     []string

	DesiredCount int
	MaxCount     int

	LambdaDist string
	VPCCIDR    string
	AZs        []string
}

// LoadSettings reads and validates the stack configuration, reporting every
// invalid key at once.
func LoadSettings(ctx *pulumi.Context) (*Settings, error) {
	c := config.New(ctx, "invoicing")
	aws := config.New(ctx, "aws")
	s := &Settings{
		Project:              fmt.Sprintf("%s-%s", ctx.Project(), ctx.Stack()),
		Region:               aws.Get("region"),
		DeployMode:           orDefault(c.Get("deployMode"), DeployFargate),
		BrokerMode:           orDefault(c.Get("brokerMode"), BrokerFargate),
		Database:             orDefault(c.Get("database"), DatabaseExternal),
		AmazonMQDeployment:   orDefault(c.Get("amazonMqDeployment"), AmazonMQSingle),
		AmazonMQInstanceType: c.Get("amazonMqInstanceType"),
		BrokerUsername:       orDefault(c.Get("brokerUsername"), "invoicing"),
		DatabaseClass:        orDefault(c.Get("databaseInstanceClass"), "db.t4g.micro"),
		OTLPEndpoint:         c.Get("otlpEndpoint"),
		ImageTag:             orDefault(c.Get("imageTag"), "latest"),
		CertificateARN:       c.Get("certificateArn"),
		DesiredCount:         2,
		MaxCount:             4,
		LambdaDist:           orDefault(c.Get("lambdaDist"), "../dist"),
		VPCCIDR:              orDefault(c.Get("vpcCidr"), "10.40.0.0/16"),
	}
	if err := c.TryObject("availabilityZones", &s.AZs); err != nil || len(s.AZs) == 0 {
		s.AZs = []string{s.Region + "a", s.Region + "b"}
	}
	if n, err := c.TryInt("desiredCount"); err == nil {
		s.DesiredCount = n
	}
	if n, err := c.TryInt("maxCount"); err == nil {
		s.MaxCount = n
	}
	var errs []error
	_ = c.TryObject("allowedOrigins", &s.AllowedOrigins)
	_ = c.TryObject("adminCidrs", &s.AdminCIDRs)
	if len(s.AllowedOrigins) == 0 {
		errs = append(errs, errors.New("invoicing:allowedOrigins: at least one browser origin for CORS"))
	}
	if s.Region == "" {
		errs = append(errs, errors.New("aws:region is not set"))
	}
	if s.AmazonMQInstanceType == "" {
		s.AmazonMQInstanceType = "mq.t3.micro"
		if s.AmazonMQDeployment == AmazonMQCluster {
			s.AmazonMQInstanceType = "mq.m5.large"
		}
	}
	oneOf := func(key, v string, allowed ...string) {
		for _, a := range allowed {
			if v == a {
				return
			}
		}
		errs = append(errs, fmt.Errorf("invoicing:%s=%q: want one of %s", key, v, strings.Join(allowed, ", ")))
	}
	oneOf("deployMode", s.DeployMode, DeployFargate, DeployLambda)
	oneOf("brokerMode", s.BrokerMode, BrokerFargate, BrokerAmazonMQ)
	oneOf("database", s.Database, DatabaseExternal, DatabaseRDS)
	oneOf("amazonMqDeployment", s.AmazonMQDeployment, AmazonMQSingle, AmazonMQCluster)
	if s.AmazonMQDeployment == AmazonMQCluster && s.AmazonMQInstanceType == "mq.t3.micro" {
		errs = append(errs, errors.New("invoicing:amazonMqInstanceType: mq.t3.micro cannot run a cluster"))
	}
	if s.DesiredCount < 1 || s.MaxCount < s.DesiredCount {
		errs = append(errs, fmt.Errorf("invoicing:desiredCount=%d, maxCount=%d: want 1 <= desiredCount <= maxCount", s.DesiredCount, s.MaxCount))
	}
	for _, cidr := range s.AdminCIDRs {
		p, err := netip.ParsePrefix(cidr)
		if err != nil || p.Masked() != p {
			errs = append(errs, fmt.Errorf("invoicing:adminCidrs: %q is not a CIDR block", cidr))
		} else if p.Bits() == 0 {
			errs = append(errs, fmt.Errorf("invoicing:adminCidrs: %q opens the admin ports to the whole internet", cidr))
		}
	}
	if _, err := netip.ParsePrefix(s.VPCCIDR); err != nil {
		errs = append(errs, fmt.Errorf("invoicing:vpcCidr: %q is not a CIDR block", s.VPCCIDR))
	}

	secret := func(key string, required bool) (pulumi.StringOutput, bool) {
		if _, err := c.TrySecret(key); err != nil {
			if required {
				errs = append(errs, fmt.Errorf("invoicing:%s is required: pulumi config set --secret %s ...", key, key))
			}
			return pulumi.Sprintf("%s", pulumi.ToSecret(pulumi.String(""))), false
		}
		v, _ := c.TrySecret(key)
		return v, true
	}
	s.BrokerPassword, _ = secret("brokerPassword", true)
	s.OTLPHeaders, s.HasOTLPHeaders = secret("otlpHeaders", false)
	switch s.Database {
	case DatabaseExternal:
		s.OrdersDatabaseURL, _ = secret("ordersDatabaseUrl", true)
		s.InvoicesDatabaseURL, _ = secret("invoicesDatabaseUrl", true)
	case DatabaseRDS:
		s.DatabasePassword, _ = secret("databasePassword", true)
	}
	return s, errors.Join(errs...)
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// Name is the physical name of a resource of this stack.
func (s *Settings) Name(suffix string) string { return s.Project + "-" + suffix }
