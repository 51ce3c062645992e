package main

import (
	"fmt"
	"net/url"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/ec2"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/rds"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

// Database holds the two services' DATABASE_URL secrets.
type Database struct {
	OrdersURL   *Secret
	InvoicesURL *Secret
	// Instance and Proxy are set with database=rds (Proxy with deployMode=lambda).
	Instance *rds.Instance
	Proxy    *rds.Proxy
}

const (
	PostgresPort    = 5432
	DatabaseUser    = "invoicing"
	PostgresVersion = "17"
	DatabaseStorage = 20
)

func newDatabase(ctx *pulumi.Context, s *Settings, n *Network, appSG *ec2.SecurityGroup) (*Database, error) {
	if s.Database == DatabaseExternal {
		orders, err := newSecret(ctx, s, "orders-database-url", "DATABASE_URL of the orders service", s.OrdersDatabaseURL)
		if err != nil {
			return nil, err
		}
		invoices, err := newSecret(ctx, s, "invoices-database-url", "DATABASE_URL of the invoices service", s.InvoicesDatabaseURL)
		if err != nil {
			return nil, err
		}
		return &Database{OrdersURL: orders, InvoicesURL: invoices}, nil
	}

	// database=rds: one instance, databases "orders" and "invoices" created
	// by the services themselves (CREATE_DATABASE=true) at first start.
	// Functions connect through RDS Proxy, so a burst of cold starts does
	// not exhaust the instance's connections.
	d := &Database{}
	clients := []pulumi.StringInput{appSG.ID()}
	var proxySG *ec2.SecurityGroup
	if s.DeployMode == DeployLambda {
		var err error
		proxySG, err = newSecurityGroup(ctx, s, n, "db-proxy", "RDS Proxy", []Rule{
			{Port: PostgresPort, From: []pulumi.StringInput{appSG.ID()}, Reason: "PostgreSQL from the functions"},
		})
		if err != nil {
			return nil, err
		}
		clients = []pulumi.StringInput{proxySG.ID()}
	}
	dbSG, err := newSecurityGroup(ctx, s, n, "db", "RDS PostgreSQL", []Rule{
		{Port: PostgresPort, From: clients, Reason: "PostgreSQL from the services or the proxy"},
	})
	if err != nil {
		return nil, err
	}
	subnets, err := rds.NewSubnetGroup(ctx, "db", &rds.SubnetGroupArgs{
		Name: pulumi.String(s.Name("db")), SubnetIds: n.PrivateSubnets, Tags: tags(s, "db"),
	})
	if err != nil {
		return nil, err
	}
	d.Instance, err = rds.NewInstance(ctx, "db", &rds.InstanceArgs{
		Identifier: pulumi.String(s.Name("db")), Engine: pulumi.String("postgres"), EngineVersion: pulumi.String(PostgresVersion),
		InstanceClass: pulumi.String(s.DatabaseClass), AllocatedStorage: pulumi.Int(DatabaseStorage), MaxAllocatedStorage: pulumi.Int(100),
		StorageType: pulumi.String("gp3"), StorageEncrypted: pulumi.Bool(true),
		Username: pulumi.String(DatabaseUser), Password: s.DatabasePassword,
		DbSubnetGroupName: subnets.Name, VpcSecurityGroupIds: pulumi.StringArray{dbSG.ID()},
		PubliclyAccessible: pulumi.Bool(false), MultiAz: pulumi.Bool(false),
		BackupRetentionPeriod: pulumi.Int(7), CopyTagsToSnapshot: pulumi.Bool(true),
		DeletionProtection: pulumi.Bool(true), SkipFinalSnapshot: pulumi.Bool(false),
		FinalSnapshotIdentifier: pulumi.String(s.Name("db-final")),
		AutoMinorVersionUpgrade: pulumi.Bool(true),
		Tags:                    tags(s, "db"),
	})
	if err != nil {
		return nil, err
	}
	host := d.Instance.Address
	if s.DeployMode == DeployLambda {
		creds, err := newSecret(ctx, s, "database-credentials", "PostgreSQL user RDS Proxy logs in as",
			credentialsJSON(DatabaseUser, s.DatabasePassword))
		if err != nil {
			return nil, err
		}
		role, err := newRole(ctx, s, "db-proxy", "rds.amazonaws.com",
			policyJSON(func(a []string) []Statement { return []Statement{readSecrets(a)} }, creds.Arn))
		if err != nil {
			return nil, err
		}
		d.Proxy, err = rds.NewProxy(ctx, "db", &rds.ProxyArgs{
			Name: pulumi.String(s.Name("db")), EngineFamily: pulumi.String("POSTGRESQL"),
			RoleArn: role.Arn, RequireTls: pulumi.Bool(true), IdleClientTimeout: pulumi.Int(1800),
			VpcSubnetIds: n.PrivateSubnets, VpcSecurityGroupIds: pulumi.StringArray{proxySG.ID()},
			Auths: rds.ProxyAuthArray{&rds.ProxyAuthArgs{
				AuthScheme: pulumi.String("SECRETS"), SecretArn: creds.Arn, IamAuth: pulumi.String("DISABLED"),
				ClientPasswordAuthType: pulumi.String("POSTGRES_SCRAM_SHA_256"),
			}},
			Tags: tags(s, "db-proxy"),
		})
		if err != nil {
			return nil, err
		}
		tg, err := rds.NewProxyDefaultTargetGroup(ctx, "db", &rds.ProxyDefaultTargetGroupArgs{
			DbProxyName: d.Proxy.Name,
			ConnectionPoolConfig: &rds.ProxyDefaultTargetGroupConnectionPoolConfigArgs{
				MaxConnectionsPercent: pulumi.Int(90), ConnectionBorrowTimeout: pulumi.Int(30),
			},
		})
		if err != nil {
			return nil, err
		}
		if _, err := rds.NewProxyTarget(ctx, "db", &rds.ProxyTargetArgs{
			DbProxyName: d.Proxy.Name, TargetGroupName: tg.Name, DbInstanceIdentifier: d.Instance.Identifier,
		}); err != nil {
			return nil, err
		}
		host = d.Proxy.Endpoint
	}
	dbURL := func(name string) pulumi.StringOutput {
		return pulumi.ToSecret(pulumi.All(s.DatabasePassword, host).ApplyT(func(v []any) string {
			u := url.URL{Scheme: "postgres", User: url.UserPassword(DatabaseUser, v[0].(string)),
				Host: fmt.Sprintf("%s:%d", v[1].(string), PostgresPort), Path: "/" + name, RawQuery: "sslmode=require"}
			return u.String()
		})).(pulumi.StringOutput)
	}
	if d.OrdersURL, err = newSecret(ctx, s, "orders-database-url", "DATABASE_URL of the orders service", dbURL("orders")); err != nil {
		return nil, err
	}
	if d.InvoicesURL, err = newSecret(ctx, s, "invoices-database-url", "DATABASE_URL of the invoices service", dbURL("invoices")); err != nil {
		return nil, err
	}
	return d, nil
}
